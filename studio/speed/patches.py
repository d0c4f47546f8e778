"""Patches of library internals and CUDA-only trainer options, each checked against the version it was made for.

    with training_patches(cfg):                # every patch below, as train and bench run the trainer
        trainer.train()
    cuda_speedups(cfg)                         # SFTConfig options: Liger's kernels, activation offload
    offload_keeping_the_memory_cache(trainer)  # activation offload without emptying the GPU memory cache each step
"""

from __future__ import annotations

import contextlib
import sys

from studio.errors import ConfigError
from studio.hardware import has_cuda
from studio.speed.compiled import compiles_layers

# The TRL version whose internals the studio's code was read against: the private functions patched here,
# the trainer methods the studio's methods replace (dataset preparation, prompt tokenizing, ORPO's scoring)
# and the SFT loss studio.train.methods.sft_metrics computes. Under another version each falls back or refuses.
TRL_CHECKED = "1.16.0"


@contextlib.contextmanager
def training_patches(cfg):
    """The patches the studio trains under: the LM head's scoring, the 8-bit optimizers' waits."""
    with scoring_only_trained_positions(), no_waits_between_8bit_updates(paged="paged" in cfg.train.optimizer):
        yield


@contextlib.contextmanager
def no_waits_between_8bit_updates(paged: bool):
    """bitsandbytes' 8-bit optimizers wait for the whole GPU after updating each parameter: a wait paged
    states need, the others not. Their updates are queued in order on one stream either way, so the
    results are the same, without 224 waits a step (LoRA on a 1B model) that leave the GPU idle while
    the CPU launches the next update."""
    try:
        import bitsandbytes.optim.optimizer as optimizer
    except ImportError:
        yield
        return
    wait = getattr(optimizer, "sync_gpu", None)
    if paged or wait is None:
        yield
        return
    optimizer.sync_gpu = lambda tensor: None
    try:
        yield
    finally:
        optimizer.sync_gpu = wait


@contextlib.contextmanager
def scoring_only_trained_positions():
    """Let TRL's fused LM head score only the positions that have a label, on every device.

    TRL projects just the labelled positions through the LM head on CUDA, but
    every position elsewhere (fixed tile shapes suit compiled accelerators). On a
    CPU that wastes most of a step: with a 262k vocabulary and masked prompts,
    the head over prompt tokens is the bulk of the work. The loss is the same
    (tests/test_train.py checks it); the quickstart trains twice as fast.
    """
    import trl
    import trl.trainer.utils as trl_utils

    if trl.__version__ != TRL_CHECKED or not hasattr(trl_utils, "_use_triton"):
        # The function may have moved or changed meaning: train as TRL does (slower on CPU, same loss).
        print(f"Note: TRL {trl.__version__} is not the {TRL_CHECKED} the loss-scoring shortcut was checked "
              "against; training uses TRL's own path (slower on CPU, same results).", file=sys.stderr)
        yield
        return
    decide = trl_utils._use_triton
    trl_utils._use_triton = lambda device: device.type == "cpu" or decide(device)
    try:
        yield
    finally:
        trl_utils._use_triton = decide


def cuda_speedups(cfg) -> dict:
    """SFTConfig options that only exist on CUDA: Liger's fused kernels and activation offload.

    TRL already scores the loss through its own fused LM head (no full logits
    tensor), so Liger's cross-entropy stays off and only its RMSNorm, RoPE and
    SwiGLU kernels are used.
    """
    if not has_cuda():
        return {}
    t, options = cfg.train, {}
    if t.kernels == "liger" and not liger_available():
        raise ConfigError("train.kernels is liger, but Liger Kernel is not installed: "
                          "pip install -r requirements-cuda.txt, or set train.kernels=auto.")
    # Liger's kernels keep torch.compile out of a layer: compiled layers get inductor's own (recipes refuse liger).
    if t.kernels == "liger" or (t.kernels == "auto" and liger_available() and not compiles_layers(cfg)):
        options["use_liger_kernel"] = True
        options["liger_kernel_config"] = {"rms_norm": True, "rope": True, "swiglu": True,
                                          "cross_entropy": False, "fused_linear_cross_entropy": False}
    if t.offload_activations:
        options["activation_offloading"] = True
    return options


def offload_keeping_the_memory_cache(trainer) -> bool:
    """Stop TRL's activation offload from emptying PyTorch's GPU memory cache before every step.

    TRL empties it whenever bitsandbytes is loaded: PEFT's 4-bit layers leave their dequantized
    weights in cached blocks that would otherwise pile up. Emptied, every step gives its memory
    back to the driver and asks for it again, each time waiting for the GPU: kept, offload costs 14%
    instead of 17% of the speed on the 1B shape, 8% instead of 13% on the 8B (results/compile-h100.md).
    The studio's fused LoRA layers dequantize without those buffers, so the cache is kept when every
    4-bit layer is fused. Returns whether it was changed.
    """
    import trl

    context = getattr(trainer, "maybe_activation_offload_context", None)
    if trl.__version__ != TRL_CHECKED or not hasattr(context, "device_module"):
        return False
    if any(_unfused_4bit(module) for module in trainer.model.modules()):
        return False
    context.device_module = _KeepingTheCache(context.device_module)
    return True


class _KeepingTheCache:
    """A torch device module (torch.cuda) whose empty_cache does nothing."""

    def __init__(self, module) -> None:
        self._module = module

    def __getattr__(self, name: str):
        return getattr(self._module, name)

    def empty_cache(self) -> None:
        pass


def _unfused_4bit(module) -> bool:
    """A LoRA layer over a bitsandbytes 4-bit weight that runs PEFT's forward."""
    from studio.speed.fused import FusedLoraForward

    base = getattr(module, "base_layer", None)
    return type(base).__name__ == "Linear4bit" and not isinstance(module, FusedLoraForward)


def liger_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("liger_kernel") is not None
