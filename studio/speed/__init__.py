"""Faster training steps with the same maths: fused LoRA layers.

    switched = setup_fused_lora(model, cfg, note=print)   # after the adapter is attached

train.fused_lora decides: auto (on with CUDA when lora.dropout is 0 and DoRA
is off, and PEFT and bitsandbytes are the versions this was checked against),
true, or false.
"""

from __future__ import annotations

from studio.config import RunConfig
from studio.errors import ConfigError
from studio.hardware import has_cuda
from studio.speed.apply import CHECKED_VERSIONS, use_fused_lora, version_mismatches

__all__ = ["CHECKED_VERSIONS", "fused_lora_wanted", "setup_fused_lora", "use_fused_lora"]


def fused_lora_wanted(cfg: RunConfig, note=lambda text: None) -> bool:
    """Whether this run's LoRA layers should be fused; refuses settings the fused path cannot honour."""
    setting, lora = cfg.train.fused_lora, cfg.lora
    if setting is False or not lora.enabled:
        return False
    unsupported = [why for why, bad in ((f"lora.dropout is {lora.dropout}", lora.dropout > 0),
                                        ("lora.use_dora is on", lora.use_dora)) if bad]
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
