"""NF4 dequantization in one Triton launch (CUDA): nested absmax, 4-bit codes and scaling together.

bitsandbytes spends three launches per weight (the 8-bit absmax, its offset,
then the 4-bit codes) and several Python calls around each; during training a
4-bit base weight is unpacked two or three times per step per layer, so the
calls themselves showed as idle GPU time. The arithmetic is bitsandbytes' own,
step for step in float32 (no fused multiply-add), so the weights come out
bit for bit the same.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

PACKED_PER_PROGRAM = 1024  # packed bytes per program: 2048 weights


@triton.jit
def _dequantize_nf4(packed_ptr, absmax_ptr, code2_ptr, absmax2_ptr, offset_ptr, table_ptr, out_ptr, n_packed,
                    BLOCK: tl.constexpr, QUANT_BLOCK: tl.constexpr, NESTED_BLOCK: tl.constexpr,
                    NESTED: tl.constexpr):
    start = tl.program_id(0).to(tl.int64) * BLOCK
    index = start + tl.arange(0, BLOCK)
    inside = index < n_packed
    byte = tl.load(packed_ptr + index, mask=inside, other=0).to(tl.int32)
    block = index * 2 // QUANT_BLOCK  # both weights of a byte share their quantization block
    if NESTED:
        code = tl.load(absmax_ptr + block, mask=inside, other=0).to(tl.int32)
        scale = tl.load(code2_ptr + code, mask=inside, other=0.0) * tl.load(absmax2_ptr + block // NESTED_BLOCK,
                                                                            mask=inside, other=0.0)
        scale = scale + tl.load(offset_ptr)
    else:
        scale = tl.load(absmax_ptr + block, mask=inside, other=0.0)
    high = tl.load(table_ptr + (byte >> 4)) * scale  # the first weight of a byte sits in its high nibble
    low = tl.load(table_ptr + (byte & 15)) * scale
    weights = tl.interleave(high, low)
    out_index = start * 2 + tl.arange(0, 2 * BLOCK)
    tl.store(out_ptr + out_index, weights.to(out_ptr.dtype.element_ty), mask=out_index < n_packed * 2)


def supports(packed: torch.Tensor, quant_state) -> bool:
    """Whether this kernel unpacks the weight: nf4 on CUDA, byte-packed, nested absmax blocks of 256 or none."""
    nested = quant_state.nested
    return (packed.is_cuda and quant_state.quant_type == "nf4" and packed.dtype == torch.uint8
            and packed.is_contiguous() and quant_state.blocksize % 2 == 0
            and quant_state.dtype in (torch.bfloat16, torch.float16, torch.float32)
            and (not nested or (quant_state.state2.absmax.dtype == torch.float32
                                and quant_state.absmax.dtype == torch.uint8)))


def dequantize_nf4(packed: torch.Tensor, quant_state) -> torch.Tensor:
    """The (out, in) weight in quant_state.dtype, exactly as bitsandbytes.functional.dequantize_4bit gives it."""
    nested = quant_state.nested
    state2 = quant_state.state2 if nested else None
    absmax = quant_state.absmax
    rows, columns = quant_state.shape
    return torch.ops.studio.dequantize_nf4(
        packed, absmax, state2.code if nested else absmax, state2.absmax if nested else absmax,
        _offset(quant_state) if nested else absmax, _table(quant_state, packed.device),
        rows, columns, quant_state.dtype, quant_state.blocksize, state2.blocksize if nested else 1, nested)


# One operator to torch.compile (studio.speed.compiled): it calls the kernel as it is, never traces into it.
# Defined with the bare operator registry rather than torch.library.custom_op, whose wrappers cost the host
# ~40 us a call (a QLoRA 8B step makes 448) against ~5 us here; the weights it reads need no gradient.
_LIBRARY = torch.library.Library("studio", "FRAGMENT")
_LIBRARY.define("dequantize_nf4(Tensor packed, Tensor absmax, Tensor code2, Tensor absmax2, Tensor offset, "
                "Tensor table, int rows, int columns, ScalarType dtype, int blocksize, int nested_blocksize, "
                "bool nested) -> Tensor")


def _dequantize_op(packed: torch.Tensor, absmax: torch.Tensor, code2: torch.Tensor, absmax2: torch.Tensor,
                   offset: torch.Tensor, table: torch.Tensor, rows: int, columns: int, dtype: torch.dtype,
                   blocksize: int, nested_blocksize: int, nested: bool) -> torch.Tensor:
    out = torch.empty((rows, columns), dtype=dtype, device=packed.device)
    n_packed = packed.numel()
    grid = (triton.cdiv(n_packed, PACKED_PER_PROGRAM),)
    _dequantize_nf4[grid](
        packed, absmax, code2, absmax2, offset, table, out, n_packed,
        BLOCK=PACKED_PER_PROGRAM, QUANT_BLOCK=blocksize, NESTED_BLOCK=nested_blocksize, NESTED=nested,
        enable_fp_fusion=False,  # bitsandbytes rounds the product before adding the offset
    )
    return out


def _dequantize_shape(packed, absmax, code2, absmax2, offset, table, rows, columns, dtype, blocksize,
                      nested_blocksize, nested) -> torch.Tensor:
    return packed.new_empty((rows, columns), dtype=dtype)


_LIBRARY.impl("dequantize_nf4", _dequantize_op, "CUDA")
torch.library.register_fake("studio::dequantize_nf4", _dequantize_shape, lib=_LIBRARY)


def _offset(quant_state) -> torch.Tensor:
    """The nested absmax offset as a one-element float32 tensor on the weight's device (made once)."""
    offset = getattr(quant_state, "_studio_offset", None)
    if offset is None:
        offset = torch.as_tensor(quant_state.offset, dtype=torch.float32, device=quant_state.absmax.device).reshape(1)
        quant_state._studio_offset = offset
    return offset


_TABLES: dict[torch.device, torch.Tensor] = {}


def _table(quant_state, device: torch.device) -> torch.Tensor:
    """The 16 NF4 values as float32 on the device (made once per device)."""
    if device not in _TABLES:
        import bitsandbytes.functional as bnb_functional

        _TABLES[device] = bnb_functional.get_4bit_type("nf4", device=device).to(torch.float32)
    return _TABLES[device]


def prepare(model: torch.nn.Module) -> None:
    """Make every nf4 weight's offset and each device's table now, before torch.compile traces a layer.

    Made inside a compiled layer, they change what the compiler guarded on (the table not yet cached, the
    offset not yet set), and the layer compiles again at its next call: with checkpointing, that next call
    is the recomputation, which then saves other tensors than the forward did, and backward fails.
    """
    for weight in model.parameters():
        quant_state = getattr(weight, "quant_state", None)
        if quant_state is not None and supports(weight, quant_state):
            if quant_state.nested:
                _offset(quant_state)
            _table(quant_state, weight.device)
