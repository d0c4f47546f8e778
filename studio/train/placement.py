"""Where a run trains: how many processes, on which GPUs, and how they share the work.

`train.devices` says which devices (auto: every GPU, else the CPU), `train.parallel`
how several of them share the work: DDP when the model and a batch fit on each
card, FSDP2 sharding when the fit estimate says they do not; DeepSpeed ZeRO when asked.

    placement = plan_placement(cfg)      # processes, GPUs, engine, each one's grad_accum, notes
    placement.in_process                 # one device and the only one in sight: trained in this process
"""

from __future__ import annotations

from dataclasses import dataclass

from studio.config import RunConfig
from studio.errors import ConfigError
from studio.config_rules import parse_devices


SHARDING_ENGINES = ("fsdp", "deepspeed-zero3")  # the weights split across the devices while training
# The engines that split the optimizer states across the processes: their checkpoints are their own, their
# weights are saved through the trainer, they step 32-bit AdamW and run uncompiled.
SPLIT_STATE_ENGINES = ("fsdp", "deepspeed-zero2", "deepspeed-zero3")


@dataclass(frozen=True)
class Placement:
    """Where a run trains: its processes, their GPUs (CUDA indices; none on the CPU) and how they share the work."""

    processes: int
    gpus: tuple[int, ...]
    engine: str  # single, ddp, fsdp, deepspeed-zero2 or deepspeed-zero3
    grad_accum: int  # each process's accumulation steps
    notes: tuple[str, ...] = ()
    # Trained inside the studio's own process: one process, and the only device it sees. (With several
    # GPUs visible, even one GPU's run is a child process that sees that GPU alone, or the trainer
    # would spread the batch over all of them with nn.DataParallel. The UI asks for a child process on
    # any GPU: run_training's gpu_in_child.)
    in_process: bool = False

    def describe(self) -> str:
        where = f"GPU {', '.join(map(str, self.gpus))}" if self.gpus else "the CPU"
        if self.processes == 1:
            return f"one process on {where}"
        how = {"ddp": "data parallel (DDP)", "fsdp": "sharded (FSDP2)", "deepspeed-zero2": "DeepSpeed ZeRO-2",
               "deepspeed-zero3": "sharded (DeepSpeed ZeRO-3)"}[self.engine]
        return f"{self.processes} processes on {where}, {how}"


def split_grad_accum(grad_accum: int, processes: int) -> int:
    """Each process's accumulation steps: the run's divided among them when it divides evenly (same rows a step)."""
    return grad_accum // processes if processes > 1 and grad_accum % processes == 0 else grad_accum


def plan_placement(cfg: RunConfig, gpu_count: int | None = None, fits_one_card: bool | None = None,
                   free_ram_gib: float | None = None, card_gib: float | None = None) -> Placement:
    """Where `cfg` trains on this machine (GPUs counted, the fit estimate, free memory and the smallest chosen
    card's memory read, unless given)."""
    from studio.hardware import has_cuda

    request = parse_devices(cfg.train.devices)
    if gpu_count is None:
        import torch

        gpu_count = torch.cuda.device_count() if has_cuda() else 0
    if request.cpu or (request.gpus is None and gpu_count == 0):
        processes, gpus = request.cpu_processes, ()
    else:
        gpus = tuple(range(gpu_count)) if request.gpus is None else request.gpus
        missing = [i for i in gpus if i >= gpu_count]
        if missing:
            seen = f"{gpu_count} GPU{'s' if gpu_count != 1 else ''} ({', '.join(map(str, range(gpu_count)))})" \
                if gpu_count else "no GPU"
            raise ConfigError(f"train.devices={cfg.train.devices} names GPU {missing[0]}, but CUDA sees {seen}. "
                              "Use auto (every GPU), or indices it sees; cpu trains on the CPU.")
        processes = len(gpus)
    engine = _engine(cfg, processes, gpus, fits_one_card)
    _refuse_what_cannot_be_shared(cfg, processes, engine)
    if (engine == "fsdp" and cfg.model.load_in == "4bit") or (engine == "deepspeed-zero3" and gpus):
        _check_each_card_holds_the_weights(cfg, gpus, card_gib)
    elif engine == "fsdp":
        _check_memory_for_loading(cfg, processes, free_ram_gib)
    per_process = split_grad_accum(cfg.train.grad_accum, processes)
    alone = processes == 1 and (gpus == (0,) and gpu_count == 1 if gpus else gpu_count == 0)
    return Placement(processes, gpus, engine, per_process, _notes(cfg, processes, engine, per_process), alone)


def _refuse_what_cannot_be_shared(cfg: RunConfig, processes: int, engine: str) -> None:
    """Settings that several processes, or sharding, cannot train with: refused with what to set instead."""
    if processes > 1 and cfg.train.method == "galore" and cfg.galore.layerwise:
        raise ConfigError("galore.layerwise updates each layer inside the backward pass, which several processes "
                          "cannot share: set galore.layerwise=false, or train on one device (train.devices=0).")
    if engine.startswith("deepspeed"):
        _refuse_what_deepspeed_does_not_train(cfg, engine)
    if engine != "fsdp":
        return
    if cfg.model.load_in == "8bit":
        # bitsandbytes' 8-bit layers need their whole weight and its scales in one place.
        quantized = "8-bit weights (model.load_in=8bit) cannot be sharded (FSDP)"
        if cfg.train.parallel == "auto":
            raise ConfigError(f"The model does not fit one card (fit estimate), and {quantized} to spread it: load "
                              "it in 4-bit (model.load_in=4bit), which shards, lower train.batch_size or "
                              "train.max_length, turn on train.gradient_checkpointing, or set train.parallel=ddp "
                              "to try each card anyway.")
        raise ConfigError(f"{quantized}: use model.load_in=4bit or 16bit to shard it, or train.parallel=ddp (each "
                          "GPU holds the quantized model).")
    if cfg.model.load_in == "4bit":
        _refuse_4bit_sharding_outside_the_fused_layers(cfg)
    if cfg.train.method == "galore":
        raise ConfigError("train.method=galore projects whole weight matrices, which sharding (FSDP) splits: use "
                          "train.parallel=ddp.")
    if cfg.train.compile_layers is True:
        raise ConfigError("train.compile_layers is not used with sharding (FSDP), which gathers each layer's "
                          "weights around its call: set train.compile_layers=false, or train.parallel=ddp.")
    if cfg.train.optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        raise ConfigError(f"train.optimizer={cfg.train.optimizer} cannot step sharded (FSDP) weights: set "
                          "train.optimizer=auto (AdamW when sharded) or adamw_torch, or train.parallel=ddp.")


DEEPSPEED_METHODS = ("sft", "dpo", "orpo", "kto")  # the methods run under DeepSpeed in the tests


def _refuse_what_deepspeed_does_not_train(cfg: RunConfig, engine: str) -> None:
    """DeepSpeed ZeRO trains the methods above on 16-bit weights, uncompiled, with a 32-bit-state optimizer."""
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(f"train.parallel={engine} needs DeepSpeed, which is not installed: run bash "
                          "scripts/setup.sh (it installs it), or use train.parallel=ddp or fsdp.")
    if cfg.model.load_in != "16bit":
        raise ConfigError(f"train.parallel={engine} trains 16-bit weights, but model.load_in is {cfg.model.load_in}: "
                          "use train.parallel=fsdp (shards 4-bit weights) or ddp, or model.load_in=16bit.")
    if cfg.train.method not in DEEPSPEED_METHODS:
        raise ConfigError(f"train.method={cfg.train.method} is not trained under DeepSpeed (only "
                          f"{', '.join(DEEPSPEED_METHODS)}): use train.parallel=ddp.")
    if cfg.train.compile_layers is True:
        raise ConfigError("train.compile_layers is not used under DeepSpeed: set train.compile_layers=auto or false.")
    if cfg.train.optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        raise ConfigError(f"train.optimizer={cfg.train.optimizer} is not stepped under DeepSpeed ZeRO, which shards "
                          "the optimizer's states itself: set train.optimizer=auto (AdamW) or adamw_torch.")


def _refuse_4bit_sharding_outside_the_fused_layers(cfg: RunConfig) -> None:
    """Sharded 4-bit weights are unpacked by the studio's fused LoRA layers (checked on two GPUs against DDP);
    bitsandbytes' own layer swaps a new weight in under FSDP's gathered one, which was never checked."""
    from studio.speed.fused import settings_the_fused_path_cannot_honour

    unfused = [why for why, bad in (("LoRA is off (lora.enabled=false)", not cfg.lora.enabled),
                                    ("train.fused_lora is off", cfg.train.fused_lora is False)) if bad]
    unfused += settings_the_fused_path_cannot_honour(cfg)
    if unfused:
        raise ConfigError(f"Sharded 4-bit training (FSDP) runs through the fused LoRA layers, but "
                          f"{' and '.join(unfused)}: set lora.dropout=0, lora.use_dora=false and "
                          "train.fused_lora=auto, or train.parallel=ddp (each GPU holds the 4-bit model).")


def _check_memory_for_loading(cfg: RunConfig, processes: int, free_ram_gib: float | None) -> None:
    """Each process of sharded training reads the whole model into memory before FSDP spreads it over
    the cards: refused when the machine's free memory cannot hold them all at once."""
    import psutil
    import torch

    from studio.fit import parameter_counts, shape_of
    from studio.hardware import GIB

    shape = shape_of(cfg.model.name_or_path)
    if shape is None:
        return  # unknown until loaded
    # The dtype it is loaded in: auto is 16-bit on a GPU, where sharded training runs.
    bytes_each = 2 if cfg.model.dtype == "auto" else getattr(torch, cfg.model.dtype).itemsize
    model_gib = sum(parameter_counts(shape)) * bytes_each / GIB
    free = psutil.virtual_memory().available / GIB if free_ram_gib is None else free_ram_gib
    if processes * model_gib > free:
        raise ConfigError(f"Sharded training (FSDP) reads the whole model into each process's memory before "
                          f"spreading it over the GPUs: {processes} x {model_gib:.1f} GiB, and {free:.1f} GiB of "
                          "RAM is free. Close other programs, train on fewer GPUs (train.devices), or load the "
                          "model in 4-bit (model.load_in=4bit) with train.parallel=ddp: each GPU then holds it whole.")


def _check_each_card_holds_the_weights(cfg: RunConfig, gpus: tuple[int, ...], card_gib: float | None) -> None:
    """Refused when the weights alone fill a card, where each process holds them whole before they are sharded:
    sharded 4-bit training (bitsandbytes quantizes on the GPU as it loads, then FSDP keeps a shard) and
    DeepSpeed ZeRO-3 (it moves the whole model to each GPU, then splits it)."""
    from studio.fit import capped_gib, estimate_fit, shape_of

    shape = shape_of(cfg.model.name_or_path)
    if shape is None:
        return  # unknown until loaded
    if card_gib is None:
        card_gib = _smallest_card_gib(gpus)
    available = capped_gib(card_gib, cfg)
    weights = estimate_fit(shape, cfg, available, on_gpu=True).weights_gib
    if weights > available:
        if cfg.model.load_in == "4bit":
            raise ConfigError(f"Sharded 4-bit training loads the whole quantized model on each GPU before spreading "
                              f"it (FSDP): {weights:.1f} GiB of 4-bit weights, and a card offers {available:.1f} GiB. "
                              "Use GPUs with more memory, or a smaller model.")
        raise ConfigError(f"DeepSpeed ZeRO-3 moves the whole model to each GPU before splitting it: {weights:.1f} GiB "
                          f"of weights, and a card offers {available:.1f} GiB. Use train.parallel=fsdp, which loads "
                          "it in memory first and spreads it over the cards.")


def _smallest_card_gib(gpus: tuple[int, ...]) -> float:
    import torch

    from studio.hardware import GIB

    return min(torch.cuda.get_device_properties(i).total_memory for i in gpus) / GIB


def _engine(cfg: RunConfig, processes: int, gpus: tuple[int, ...], fits_one_card: bool | None) -> str:
    """single, ddp, fsdp or DeepSpeed: auto shards (FSDP) only a model the fit estimate says one card cannot hold."""
    if processes == 1:
        return "single"
    if cfg.train.parallel == "fsdp" and not gpus:
        raise ConfigError("train.parallel=fsdp shards the model across GPUs; on the CPU use train.parallel=ddp "
                          "(or auto).")
    if cfg.train.parallel != "auto":
        return cfg.train.parallel
    if not gpus:
        return "ddp"
    if fits_one_card is None:
        fits_one_card = _fits_one_card(cfg, gpus)
    return "ddp" if fits_one_card else "fsdp"


def _fits_one_card(cfg: RunConfig, gpus: tuple[int, ...]) -> bool:
    """The fit estimate's verdict for the smallest chosen card (unknown shapes are taken to fit: DDP is faster)."""
    from studio.fit import capped_gib, check_fit

    est, _ = check_fit(cfg, capped_gib(_smallest_card_gib(gpus), cfg), on_gpu=True)
    return est is None or est.verdict != "does not fit"


def _notes(cfg: RunConfig, processes: int, engine: str, per_process: int) -> tuple[str, ...]:
    if processes == 1:
        return ()
    t = cfg.train
    rows = t.batch_size * t.grad_accum
    if per_process != t.grad_accum:
        batches = f"{per_process} batch{'es' if per_process != 1 else ''}"
        notes = [f"Each of the {processes} processes accumulates {batches} of {t.batch_size}: a step sees "
                 f"{rows} rows, as on one device."]
    else:
        notes = [f"train.grad_accum={t.grad_accum} does not divide among {processes} devices: a step sees "
                 f"{rows * processes} rows ({processes} times one device's {rows}), and train.max_steps covers "
                 f"{processes} times the data. Set train.grad_accum to a multiple of {processes} to keep one "
                 "device's step."]
    if engine == "fsdp" and cfg.train.parallel == "auto":
        notes.append("The model does not fit one card (fit estimate): its weights, gradients and optimizer states "
                     "are sharded across the cards (FSDP2).")
    return tuple(notes)
