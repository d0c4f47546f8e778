"""Products with a frozen bitsandbytes 4-bit weight (nf4 or fp4, with or without nested absmax).

On CUDA an nf4 weight is unpacked by one Triton launch (studio.speed.nf4_triton,
bit for bit bitsandbytes' result); anything else goes through bitsandbytes.
"""

from __future__ import annotations

import torch

try:  # imported here, not at the first product: compiled layers trace the products (studio.speed.compiled)
    from studio.speed import nf4_triton as _NF4_TRITON
except ImportError:  # no Triton (CPU-only installs): bitsandbytes unpacks
    _NF4_TRITON = None


def _as_bytes(packed: torch.Tensor) -> torch.Tensor:
    """The packed weight as bytes: sharded (FSDP) training stores them as a 16-bit tensor, which FSDP can split."""
    return packed if packed.dtype == torch.uint8 else packed.view(torch.uint8).view(-1, 1)


def _one_launch(packed: torch.Tensor, quant_state):
    """studio.speed.nf4_triton where it unpacks this weight, else None."""
    kernel = _NF4_TRITON if packed.is_cuda else None
    return kernel if kernel is not None and kernel.supports(packed, quant_state) else None


def dequantize_4bit(packed: torch.Tensor, quant_state, dtype: torch.dtype) -> torch.Tensor:
    """The (out, in) weight in `dtype`."""
    packed = _as_bytes(packed)
    kernel = _one_launch(packed, quant_state)
    if kernel is not None:
        weight = kernel.dequantize_nf4(packed, quant_state)
    else:
        import bitsandbytes.functional as bnb_functional

        weight = bnb_functional.dequantize_4bit(packed, quant_state)
    return weight if weight.dtype == dtype else weight.to(dtype)


def linear_4bit(rows: torch.Tensor, packed: torch.Tensor, quant_state, bias: torch.Tensor | None) -> torch.Tensor:
    """rows @ W^T + bias without a gradient: unpacked by one launch on CUDA, else bitsandbytes' own product."""
    packed = _as_bytes(packed)
    kernel = _one_launch(packed, quant_state)
    if kernel is None:
        import bitsandbytes as bnb

        with torch.no_grad():
            return bnb.matmul_4bit(rows, packed, quant_state=quant_state, bias=bias)
    w = kernel.dequantize_nf4(packed, quant_state)
    w = w if w.dtype == rows.dtype else w.to(rows.dtype)
    return rows @ w.t() if bias is None else torch.addmm(bias, rows, w.t())


def prepare_for_compiling(model: torch.nn.Module) -> None:
    """What the one-launch unpacking caches per weight and device, made before torch.compile traces it."""
    if _NF4_TRITON is not None:
        _NF4_TRITON.prepare(model)
