"""Decoder layers compiled with torch.compile (train.compile_layers; studio.speed.apply calls it).

    compiled = compile_decoder_layers(model, note=print)   # how many layers will run compiled

Where a step is made of many small kernels, the GPU waits for the Python that
launches them, one by one (results/bench-h100-fused.md: one CPU thread busy
for the whole step). A compiled layer runs its forward and its backward as a
few generated kernels. Each layer's module call is what gets compiled, inside
transformers' gradient-checkpointing wrapper, so checkpointing still keeps
only each layer's input (tests/test_speed_compiled.py counts what is kept).
The layers of a model share their compiled code: the first step compiles once
for all of them, and recompiles once if the row length changes.
"""

from __future__ import annotations

import torch


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's decoder layers: the modules transformers checkpoints one by one."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def compile_decoder_layers(model: torch.nn.Module, note=lambda text: None) -> int:
    """Have every decoder layer compile at its first call; returns how many will."""
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile()
    note(f"Compiled decoder layers: {len(layers)} (torch.compile; the first steps include compiling them)."
         if layers else "Compiled decoder layers: none found in this model; it trains as it is.")
    return len(layers)
