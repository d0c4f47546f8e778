"""A LoRA linear layer in as few kernels as the maths allows, forward and backward.

    y = x @ W^T + bias + s * (x @ A^T) @ B^T

PEFT computes this as separate operations: the base product, two small
products, a scale, an add, and casts of A and B under autocast, each a pass
over the whole activation (and as many again in backward). Here the LoRA term
is accumulated into the base product's output buffer by one matrix multiply
(`out.addmm_(x @ A^T, B^T, alpha=s)`), and the backward pass is written out
by hand so the input's gradient is accumulated the same way:

    dB = s * dy^T @ (x @ A^T)        dA = (s * dy @ B)^T @ x
    dx = dy @ W + (s * dy @ B) @ A

A 4-bit base weight is dequantized for the forward product and again for the
backward one; the 16-bit copy never outlives the product that needs it.
"""

from __future__ import annotations

import torch

from studio.speed.nf4 import dequantize_4bit, linear_4bit


def dequantize(weight: torch.Tensor, quant_state, dtype: torch.dtype) -> torch.Tensor:
    """The base weight as a (out, in) matrix of `dtype`: itself, or a bitsandbytes 4-bit weight unpacked."""
    if quant_state is None:
        return weight if weight.dtype == dtype else weight.to(dtype)
    return dequantize_4bit(weight, quant_state, dtype)


def base_product(rows: torch.Tensor, weight: torch.Tensor, quant_state, bias: torch.Tensor | None) -> torch.Tensor:
    """rows @ W^T + bias, a fresh tensor in rows' dtype (a 4-bit weight: see studio.speed.nf4)."""
    if quant_state is not None:
        return linear_4bit(rows, weight, quant_state, bias)
    w = dequantize(weight, None, rows.dtype)
    return rows @ w.t() if bias is None else torch.addmm(bias, rows, w.t())


def accumulate_product(out: torch.Tensor, left: torch.Tensor, right: torch.Tensor, scale: float) -> None:
    """out += scale * left @ right, in out's own buffer.

    Compiled (studio.speed.compiled), an in-place `out.addmm_` becomes an out-of-place addmm, which first
    copies `out` whole into a new buffer: 336 copies in a Llama 3.2 1B LoRA step, 8 ms of the GPU's
    150. As an operator of its own that says it writes `out`, it stays in place: the compiler sees `out`
    used nowhere after and lets it write there."""
    if torch.compiler.is_compiling():
        torch.ops.studio.accumulate_product(out, left, right, scale)
    else:  # eager: the plain call, without an operator's dispatch on the host
        out.addmm_(left, right, alpha=scale)


# Defined with the bare operator registry rather than torch.library.custom_op: a call through custom_op's
# wrappers costs the host ~40 us (about what the copy it saves costs the GPU), this one ~5 us. Only compiled
# graphs call it, where autograd is already handled (LoraLinearFunction's backward).
_LIBRARY = torch.library.Library("studio", "FRAGMENT")
_LIBRARY.define("accumulate_product(Tensor(a!) out, Tensor left, Tensor right, float scale) -> ()")


def _accumulate(out: torch.Tensor, left: torch.Tensor, right: torch.Tensor, scale: float) -> None:
    out.addmm_(left, right, alpha=scale)


_LIBRARY.impl("accumulate_product", _accumulate, "CompositeExplicitAutograd")
torch.library.register_fake("studio::accumulate_product", lambda out, left, right, scale: None, lib=_LIBRARY)


def scaled_product(left: torch.Tensor, right: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * left @ right in one matrix multiply (the scale rides on the product, no extra pass)."""
    out = left.new_empty(left.shape[0], right.shape[1])
    return torch.addmm(out, left, right, beta=0, alpha=scale)  # beta=0: out's contents are ignored


class LoraLinearFunction(torch.autograd.Function):
    """Base product plus LoRA term, with gradients for the input and the two LoRA factors only.

    The base weight and bias are frozen: they get no gradient, and they are kept
    on `ctx` rather than saved as activations, so activation offloading and
    checkpointing never copy them.
    """

    @staticmethod
    def forward(ctx, x, weight, quant_state, bias, lora_a, lora_b, scale: float, dtype: torch.dtype):
        rows = x.reshape(-1, x.shape[-1]).to(dtype)
        a, b = lora_a.to(dtype), lora_b.to(dtype)
        out = base_product(rows, weight, quant_state, None if bias is None else bias.to(dtype))
        xa = rows @ a.t()
        accumulate_product(out, xa, b.t(), scale)

        ctx.save_for_backward(rows, xa, a, b)
        ctx.weight, ctx.quant_state, ctx.scale, ctx.dtype = weight, quant_state, scale, dtype
        ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
        ctx.factor_dtypes = (lora_a.dtype, lora_b.dtype)
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        rows, xa, a, b = ctx.saved_tensors
        need_x, _, _, _, need_a, need_b = ctx.needs_input_grad[:6]
        grad = grad_out.reshape(-1, grad_out.shape[-1]).to(ctx.dtype)

        grad_xa = scaled_product(grad, b, ctx.scale)  # (tokens, r): small
        grad_a = grad_xa.t() @ rows if need_a else None
        grad_b = scaled_product(grad.t(), xa, ctx.scale) if need_b else None
        grad_x = None
        if need_x:
            w = dequantize(ctx.weight, ctx.quant_state, ctx.dtype)
            grad_x = grad @ w
            del w
            accumulate_product(grad_x, grad_xa, a, 1.0)
            grad_x = grad_x.view(ctx.x_shape).to(ctx.x_dtype)
        a_dtype, b_dtype = ctx.factor_dtypes
        return (grad_x, None, None, None,
                None if grad_a is None else grad_a.to(a_dtype),
                None if grad_b is None else grad_b.to(b_dtype),
                None, None)


def lora_linear(x, weight, quant_state, bias, lora_a, lora_b, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """y = x @ W^T + bias + scale * (x @ A^T) @ B^T in `dtype`, W given as a matrix or 4-bit with its quant_state."""
    return LoraLinearFunction.apply(x, weight, quant_state, bias, lora_a, lora_b, scale, dtype)
