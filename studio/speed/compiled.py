"""Decoder layers compiled with torch.compile (train.compile_layers; studio.speed.apply calls it).

    compiled = compile_decoder_layers(model, note=print)   # how many layers will run compiled

Where a step is made of many small kernels, the GPU waits for the Python that
launches them, one by one (results/bench-h100-fused.md: one CPU thread busy
for the whole step). A compiled layer runs its forward and its backward as a
few generated kernels. Each layer's module call is what gets compiled, and
with it the gradient checkpointing transformers puts around the layer's
forward: torch.compile recomputes the layer in backward itself, so only each
layer's input is kept (tests/test_speed_compiled.py counts what is kept).

The layers of a model share their compiled code: the first step compiles it
once for all of them. Each new situation compiles another version (the first
change of row length, evaluation without gradients, a preference method's
reference pass with the adapter off, Gemma's local and global layers), and
torch.compile runs a layer uncompiled once a code has 8 versions, so the
limit is raised here.
"""

from __future__ import annotations

import torch


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's decoder layers: the modules transformers checkpoints one by one."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


VERSIONS_PER_CODE = 64  # compiled versions torch.compile keeps of one function before giving up on it


def compile_decoder_layers(model: torch.nn.Module, note=lambda text: None) -> int:
    """Have every decoder layer compile at its first call; returns how many will."""
    import torch._dynamo.config as dynamo

    dynamo.recompile_limit = max(dynamo.recompile_limit, VERSIONS_PER_CODE)
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile()
    note(f"Compiled decoder layers: {len(layers)} (torch.compile; the first steps include compiling them)."
         if layers else "Compiled decoder layers: none found in this model; it trains as it is.")
    return len(layers)
