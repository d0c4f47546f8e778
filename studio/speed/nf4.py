"""Products with a frozen bitsandbytes 4-bit weight (nf4 or fp4, with or without nested absmax)."""

from __future__ import annotations

import torch


def dequantize_4bit(packed: torch.Tensor, quant_state, dtype: torch.dtype) -> torch.Tensor:
    """The (out, in) weight in `dtype`; bitsandbytes' own kernels."""
    import bitsandbytes.functional as bnb_functional

    weight = bnb_functional.dequantize_4bit(packed, quant_state)
    return weight if weight.dtype == dtype else weight.to(dtype)


def linear_4bit(rows: torch.Tensor, packed: torch.Tensor, quant_state, bias: torch.Tensor | None) -> torch.Tensor:
    """rows @ W^T + bias without a gradient, as bitsandbytes' Linear4bit computes it (the same kernel choice)."""
    import bitsandbytes as bnb

    with torch.no_grad():
        return bnb.matmul_4bit(rows, packed, quant_state=quant_state, bias=bias)
