"""What sharded training (FSDP2) of 4-bit weights needs beyond accelerate's defaults: their bytes gathered intact.

FSDP splits only floating-point tensors, so sharded 4-bit weights are packed bytes stored as a 16-bit
tensor (studio.models.quantization_config). Before each layer runs, FSDP copies the shards of the
layer's parameters into one buffer and gathers it from every GPU. When all of them share one dtype, the
buffer has that dtype, and on CUDA the copy (torch._foreach_copy_) reads 16-bit values as float32 and
writes them back: every pair of bytes whose bits read as NaN comes back as the one canonical NaN. Random
bytes hold about 0.4% such pairs, each four 4-bit weights, changed at every gather, silently (on two
GPUs, the LoRA gradients came out 18% away from data parallel's). A layer whose parameters differ in
dtype is gathered as plain bytes instead.

So the packed bytes are stored as the other 16-bit dtype than the model's (float16 beside a bfloat16
model's norms and LoRA weights), and FSDP casts nothing (its mixed precision would turn the float16 bytes
into bfloat16 numbers). The computation stays in the model's dtype all the same: the norms are in it,
TRL keeps a quantized model's LoRA weights in it, and the packed bytes unpack to it.

    policy = packed_weights_policy(model)   # None: accelerate's own suits the model
"""

from __future__ import annotations

import torch

from studio.errors import TrainingError


def packed_storage_dtype(model_dtype: torch.dtype) -> torch.dtype:
    """The 16-bit dtype that holds a sharded model's packed 4-bit bytes: not the model's own."""
    return torch.float16 if model_dtype == torch.bfloat16 else torch.bfloat16


def packed_weights_policy(model):
    """FSDP2's mixed-precision policy for a model with 16-bit-stored 4-bit weights (None for any other):
    it casts nothing; refused where packed weights would not be gathered as bytes."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    packed = {id(p) for p in model.parameters() if _packed_in_16_bits(p)}
    if not packed:
        return None
    layers = _decoder_layers_with_packed_weights(model)
    inside = {id(p) for _, layer in layers for p in layer.parameters()}
    if not packed <= inside:  # FSDP would gather them in a group of their own dtype
        raise TrainingError("Sharded 4-bit training shards packed weights inside the decoder layers only, and this "
                            "model has some outside them: set train.parallel=ddp (each GPU holds the 4-bit model).")
    for name, layer in layers:
        dtypes = {p.dtype for p in layer.parameters()}
        if len(dtypes) < 2:
            raise TrainingError(
                f"Sharded 4-bit training stores the packed weights in another dtype than the rest of each layer, "
                f"but every parameter of {name} is {dtypes.pop()}: FSDP would gather the packed weights as "
                "numbers and change some of them. Set train.parallel=ddp (each GPU holds the 4-bit model).")
    return MixedPrecisionPolicy()


def keep_packed_weights_intact(trainer) -> None:
    """Give the trainer's FSDP plugin the policy above (it is read when the trainer wraps the model)."""
    policy = packed_weights_policy(trainer.model)
    if policy is not None and trainer.is_fsdp_enabled:
        trainer.accelerator.state.fsdp_plugin.mixed_precision_policy = policy


def _decoder_layers_with_packed_weights(model) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of each layer FSDP shards on its own (the model's no-split classes, as accelerate
    wraps them) that holds 4-bit weights stored in a 16-bit dtype."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    wrapped = set(getattr(base, "_no_split_modules", None) or [])
    return [(name, module) for name, module in model.named_modules()
            if type(module).__name__ in wrapped and any(_packed_in_16_bits(p) for p in module.parameters())]


def _packed_in_16_bits(parameter: torch.Tensor) -> bool:
    return type(parameter).__name__ == "Params4bit" and parameter.dtype in (torch.bfloat16, torch.float16)
