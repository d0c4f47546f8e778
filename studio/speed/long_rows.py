"""Feed-forward blocks in slices along a long row, so their activations stop growing with its length.

A feed-forward block treats every token on its own, so running it over
slices of the sequence and concatenating is exactly the same maths. On a
long row its intermediate tensors are the largest thing in a training step
(Llama 3.1 8B at 98k tokens: 2.6 GiB for each of gate, up and their
product, plus their gradients). Each slice is checkpointed: the forward pass
keeps only the slice's input, and the backward pass recomputes one slice's
intermediates at a time.

    slice_feed_forward(model, tokens=8192)   # rows up to 8192 tokens: unchanged
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def slice_feed_forward(model: torch.nn.Module, tokens: int) -> int:
    """Make every gated feed-forward block of `model` run in slices of `tokens`; returns how many."""
    if tokens <= 0:
        return 0
    blocks = [m for m in model.modules() if all(hasattr(m, p) for p in ("gate_proj", "up_proj", "down_proj"))]
    for block in blocks:
        _slice(block, tokens)
    return len(blocks)


_SLICED_CLASSES: dict[tuple[type, int], type] = {}


def _slice(block: torch.nn.Module, tokens: int) -> None:
    # The call is changed rather than `forward`: fused-kernel libraries (Liger) replace a
    # block's `forward` when training starts, and the slicing must wrap whichever forward runs.
    base = type(block)
    if getattr(base, "slice_tokens", None) is not None:
        base = base.__mro__[1]
    # One sliced class per block class: compiled layers (studio.speed.compiled) then share their code.
    if (base, tokens) not in _SLICED_CLASSES:
        _SLICED_CLASSES[base, tokens] = _sliced_class(base, tokens)
    block.__class__ = _SLICED_CLASSES[base, tokens]


def _sliced_class(base: type, tokens: int) -> type:
    def __call__(self, hidden: torch.Tensor, *args, **kwargs):
        if hidden.dim() < 2 or hidden.shape[-2] <= self.slice_tokens or not torch.is_grad_enabled():
            return base.__call__(self, hidden, *args, **kwargs)
        slices = [
            checkpoint(base.__call__, self, piece, *args, use_reentrant=False, **kwargs)
            for piece in hidden.split(self.slice_tokens, dim=-2)
        ]
        return torch.cat(slices, dim=-2)

    return type(f"Sliced{base.__name__}", (base,), {"__call__": __call__, "slice_tokens": tokens})
