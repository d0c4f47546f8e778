"""Decoder layers compiled with torch.compile (train.compile_layers; studio.speed.apply calls it).

    if compiles_layers(cfg, note=print):                  # train.compile_layers, auto decided here
        compile_decoder_layers(model, note=print)         # how many layers will run compiled

Where a step is made of many small kernels, the GPU waits for the Python that
launches them, one by one (results/bench-h100-fused.md: one CPU thread busy
for the whole step). A compiled layer runs its forward and its backward as a
few generated kernels.

What is compiled is the layer's own forward, beneath the gradient
checkpointing transformers puts around it: the checkpoint stays plain PyTorch,
keeps only each layer's input, and runs the compiled forward again in
backward. Compiling the checkpoint as well looked like the same thing but is
not: with the fused LoRA layers inside, torch.compile saved every activation
(1B shape, 4 x 2048 on a GPU: 5.96 GiB kept after the forward pass against
0.66 GiB), and with 4-bit weights inductor failed to build the graph
(results/compile_memory/).

The layers of a model share their compiled code: the first step compiles it
once for all of them. Each new situation compiles another version (the first
change of row length, evaluation without gradients, a preference method's
reference pass with the adapter off, Gemma's local and global layers), and
torch.compile runs a layer uncompiled once a code has 8 versions, so the
limit is raised here.

Under train.compile_layers=auto a layer that fails to compile runs as it is
(torch.compile's own fallback, with a warning in the log): the run goes on at
the uncompiled speed. Set to true, a failure to compile ends the run with
torch.compile's error.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys

import torch

from studio.config import RunConfig
from studio.hardware import has_cuda, split_states
from studio.config_rules import settings_that_cannot_compile
from studio.speed.nf4 import prepare_for_compiling


def compiles_layers(cfg: RunConfig, note=lambda text: None) -> bool:
    """Whether this run compiles its decoder layers: train.compile_layers, auto decided for this machine."""
    setting = cfg.train.compile_layers
    if setting != "auto":
        return setting  # true: recipes and placement have refused what cannot compile
    if not has_cuda() or settings_that_cannot_compile(cfg) or split_states():
        return False
    t = cfg.train
    if 0 < t.feed_forward_slice < t.max_length:
        # A sliced block checkpoints each slice inside the layer, where torch.compile would trace the
        # checkpoint itself: what kept every activation of a whole layer (the module docstring).
        note(f"Compiled decoder layers off: rows up to {t.max_length} tokens run their feed-forward blocks in "
             f"slices of {t.feed_forward_slice} (train.feed_forward_slice), which are not compiled.")
        return False
    missing = what_compiling_lacks()
    if missing:
        note(f"Compiled decoder layers off: {missing}. Training runs uncompiled (~15% slower on a GPU).")
    return not missing


def what_compiling_lacks() -> str | None:
    """Why torch.compile cannot build GPU kernels here, or None when it can."""
    if sys.platform == "win32":
        return "torch.compile is not set up by default on Windows (it needs Triton for Windows and MSVC)"
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    if not (os.environ.get("CC") or any(shutil.which(c) for c in ("cc", "gcc", "clang"))):
        return "no C compiler found (Triton builds its GPU launchers with one: install gcc)"
    return None


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's decoder layers: the modules transformers checkpoints one by one."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


VERSIONS_PER_CODE = 64  # compiled versions torch.compile keeps of one function before giving up on it


def compile_decoder_layers(model: torch.nn.Module, note=lambda text: None, fall_back: bool = False) -> int:
    """Have every decoder layer compile its forward at its first call; returns how many will.

    With `fall_back`, a layer torch.compile fails on runs uncompiled instead of raising."""
    import torch._dynamo.config as dynamo

    dynamo.recompile_limit = max(dynamo.recompile_limit, VERSIONS_PER_CODE)
    dynamo.suppress_errors = fall_back
    prepare_for_compiling(model)
    layers = decoder_layers(model)
    for layer in layers:
        layer.__class__ = _compiled_class(type(layer))
    note(f"Compiled decoder layers: {len(layers)} (torch.compile; the first steps include compiling them)."
         if layers else "Compiled decoder layers: none found in this model; it trains as it is.")
    return len(layers)


_COMPILED_CLASSES: dict[type, type] = {}


def _compiled_class(layer_class: type) -> type:
    """A subclass whose forward is the compiled forward of `layer_class`; one per class, so layers share their code.

    transformers wraps the forward of every subclass in its checkpointing, and only the outermost wrapper
    checkpoints: the subclass's checkpoint is the one that runs, around the compiled forward of the class.
    """
    if getattr(layer_class, "compiled_forward", False):
        return layer_class
    if layer_class not in _COMPILED_CLASSES:
        _COMPILED_CLASSES[layer_class] = type(layer_class.__name__, (layer_class,), {
            "forward": torch.compile(layer_class.forward), "compiled_forward": True,
            "__module__": layer_class.__module__})
    return _COMPILED_CLASSES[layer_class]
