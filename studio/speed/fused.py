"""Fused LoRA layers: switch a PEFT model's LoRA linear layers to the fused computation (studio.speed.lora_linear).

    switched = setup_fused_lora(model, cfg, note=print)   # after the adapter is attached; train.fused_lora decides

train.fused_lora: auto (on with CUDA when lora.dropout is 0 and DoRA is off,
and PEFT and bitsandbytes are the versions this was checked against), true,
or false.

Each switched layer keeps its class's name, parameters and state dict (the
adapter saves, loads and merges exactly as before); only its forward changes,
and a call the fused path does not cover (adapters disabled or merged, several
active adapters, dropout, DoRA, a trainable base) runs PEFT's own forward.

This reads PEFT's and bitsandbytes' layer attributes (lora_A, lora_B, scaling,
lora_dropout, lora_variant, base_layer, weight.quant_state): names that are
not public API. They were checked against the versions in CHECKED_VERSIONS.
"""

from __future__ import annotations

import importlib.metadata

import torch

from studio.config import RunConfig
from studio.errors import ConfigError
from studio.hardware import has_cuda
from studio.speed.lora_linear import lora_linear

CHECKED_VERSIONS = {"peft": "0.21.2", "bitsandbytes": "0.50.2"}


def version_mismatches() -> list[str]:
    """Installed versions that differ from the checked ones, in words (empty when all match)."""
    found = []
    for package, checked in CHECKED_VERSIONS.items():
        try:
            installed = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
        if installed != checked:
            found.append(f"{package} {installed} (checked: {checked})")
    return found


def use_fused_lora(model: torch.nn.Module) -> int:
    """Give every LoRA linear layer of `model` the fused forward; returns how many layers now have it."""
    count = 0
    for module in model.modules():
        fused = _fused_class(type(module))
        if fused is not None and _has_supported_base(module) and not getattr(module, "fan_in_fan_out", False):
            module.__class__ = fused
            count += 1
    return count


class FusedLoraForward:
    """Mixed in before PEFT's LoRA layer class: the fused forward, PEFT's own where it does not apply."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        call = _fused_call(self, x) if not args and not kwargs else None
        if call is None:
            return super().forward(x, *args, **kwargs)
        weight, quant_state, bias, adapter, dtype, out_dtype = call
        out = lora_linear(x, weight, quant_state, bias, self.lora_A[adapter].weight, self.lora_B[adapter].weight,
                          float(self.scaling[adapter]), dtype)
        return out if out.dtype == out_dtype else out.to(out_dtype)


_FUSED_CLASSES: dict[type, type] = {}


def _fused_class(cls: type) -> type | None:
    """The fused subclass of a PEFT LoRA linear class (made once), or None for any other module class."""
    if issubclass(cls, FusedLoraForward):
        return None
    if cls not in _FUSED_CLASSES:
        if not _is_lora_linear_class(cls):
            return None
        _FUSED_CLASSES[cls] = type(cls.__name__, (FusedLoraForward, cls), {"__module__": cls.__module__})
    return _FUSED_CLASSES[cls]


def _is_lora_linear_class(cls: type) -> bool:
    from peft.tuners.lora import layer

    if cls is layer.Linear:
        return True
    try:
        from peft.tuners.lora import bnb
    except ImportError:
        return False
    return cls is getattr(bnb, "Linear4bit", None)


def _has_supported_base(module) -> bool:
    """Whether the layer's base is a plain nn.Linear or a bitsandbytes Linear4bit (8-bit and others keep PEFT's)."""
    base = module.get_base_layer()
    if type(base) is torch.nn.Linear:
        return True
    try:
        import bitsandbytes as bnb
    except ImportError:
        return False
    return isinstance(base, bnb.nn.Linear4bit)


def _fused_call(layer, x: torch.Tensor):
    """(weight, quant_state, bias, adapter, compute dtype, output dtype) when the fused path computes
    exactly what PEFT would for this call, else None."""
    if layer.disable_adapters or layer.merged:
        return None
    adapters = [a for a in layer.active_adapters if a in layer.lora_A]
    if len(adapters) != 1:
        return None
    adapter = adapters[0]
    if (adapter in layer.lora_variant or not isinstance(layer.lora_dropout[adapter], torch.nn.Identity)
            or layer.lora_B[adapter].bias is not None):
        return None
    base = layer.get_base_layer()
    weight, bias = base.weight, base.bias
    if weight.requires_grad or (bias is not None and bias.requires_grad):
        return None
    autocast = torch.is_autocast_enabled(x.device.type)
    quant_state = getattr(weight, "quant_state", None)
    if quant_state is None and type(base) is not torch.nn.Linear:
        # A 4-bit weight that lost its quantization state on the way: FSDP hands back gathered weights as
        # plain tensors. The layer keeps the state too (bitsandbytes' own forward restores it from there).
        quant_state = getattr(base, "quant_state", None)
        if quant_state is None or weight.dim() != 2 or weight.shape[1] != 1:
            return None
    if quant_state is None:  # a 16-bit base: F.linear(x, W) in x's dtype, or autocast's
        dtype = torch.get_autocast_dtype(x.device.type) if autocast else x.dtype
        return weight, None, bias, adapter, dtype, dtype
    if getattr(quant_state, "packing_format_for_cpu", False):
        return None  # repacked for CPU inference: bitsandbytes' own kernel reads it
    # A 4-bit base computes in its compute dtype and answers in x's dtype (bitsandbytes' Linear4bit).
    dtype = base.compute_dtype or x.dtype
    if autocast:
        dtype = torch.get_autocast_dtype(x.device.type)
    return weight, quant_state, bias, adapter, dtype, x.dtype


def settings_the_fused_path_cannot_honour(cfg: RunConfig) -> list[str]:
    """The LoRA settings that keep the layers on PEFT's own forward, in words (empty when none)."""
    lora = cfg.lora
    return [why for why, bad in ((f"lora.dropout is {lora.dropout}", lora.dropout > 0),
                                 ("lora.use_dora is on", lora.use_dora)) if bad]


def fused_lora_wanted(cfg: RunConfig, note=lambda text: None) -> bool:
    """Whether this run's LoRA layers should be fused; refuses settings the fused path cannot honour."""
    setting, lora = cfg.train.fused_lora, cfg.lora
    if setting is False or not lora.enabled:
        return False
    unsupported = settings_the_fused_path_cannot_honour(cfg)
    if setting is True and unsupported:
        raise ConfigError(f"train.fused_lora=true needs lora.dropout=0 and lora.use_dora=false, but "
                          f"{' and '.join(unsupported)}. Change those, or set train.fused_lora=auto.")
    mismatches = version_mismatches()
    if setting == "auto":
        if not has_cuda() or unsupported:
            return False
        if mismatches:
            note(f"Fused LoRA layers off: they read PEFT/bitsandbytes internals checked against other versions "
                 f"than installed: {', '.join(mismatches)}. Set train.fused_lora=true to use them anyway.")
            return False
    elif mismatches:
        note(f"Fused LoRA layers on with untested versions: {', '.join(mismatches)}. "
             "If training fails or its losses look wrong, set train.fused_lora=false.")
    return True


def setup_fused_lora(model, cfg: RunConfig, note=lambda text: None) -> int:
    """Switch the model's LoRA linear layers to the fused forward when the run wants it; returns how many."""
    if not fused_lora_wanted(cfg, note):
        return 0
    count = use_fused_lora(model)
    if count:
        note(f"Fused LoRA layers: {count} (the LoRA term accumulated into the base matrix multiply).")
    return count
