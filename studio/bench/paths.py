"""The two training paths the benchmark compares, step by step on the same rows.

"studio" is exactly what `launch.py train` runs (studio.models.load_model,
attach_lora, studio.train.make_trainer: TRL's SFTTrainer with the studio's
options). "reference" is the textbook recipe from the QLoRA tutorials:
transformers + PEFT + bitsandbytes, `prepare_model_for_kbit_training`,
gradient checkpointing, the model's own loss over the full logits, AdamW.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import TrainerCallback

from studio.config import RunConfig
from studio.data.building import LABELLED, PAIRS
from studio.recipes import apply_overrides
from studio.hardware import free_accelerator_memory, gpu_busy_percent, has_cuda, resolve_dtype
from studio.speed.patches import training_patches
from studio.train.methods import method_for
from studio.train.training import load_for_training

GIB = 1024**3
LEARNING_RATE = 1e-4


@dataclass(frozen=True)
class BenchSpec:
    model: str  # a shape name (studio.bench.shapes) or a model folder
    method: str  # "qlora" (4-bit base + LoRA), "lora" (16-bit base + LoRA) or "full" (all weights, 16-bit)
    batch: int
    length: int
    steps: int = 10  # measured steps, after `warmup`
    warmup: int = 3
    rank: int = 16
    seed: int = 0
    profile: bool = False  # after the measured steps, record where the GPU time of a few more goes
    profile_steps: int = 3  # steps run under the profiler; never timed (the profiler slows the host)
    overrides: tuple[str, ...] = ()  # dotted config overrides for the studio path, e.g. train.kernels=none
    train_method: str = "sft"  # train.method: a preference method reads two rows per pair


@dataclass
class PathResult:
    path: str
    step_seconds: list[float] = field(default_factory=list)  # measured steps only
    losses: list[float] = field(default_factory=list)  # every step, warm-up included
    peak_allocated_gib: float | None = None
    peak_reserved_gib: float | None = None
    error: str | None = None
    profile: dict | None = None  # GPU time per kind of kernel over the profiled steps
    gpu_busy_percent: float | None = None  # NVML's reading over the measured steps (CUDA only)

    @property
    def median_step_s(self) -> float | None:
        return statistics.median(self.step_seconds) if self.step_seconds else None


def total_steps(spec: BenchSpec) -> int:
    """Warm-up, measured and (with `profile`) profiled steps."""
    return spec.warmup + spec.steps + (spec.profile_steps if spec.profile else 0)


def studio_config(spec: BenchSpec, folder: Path) -> RunConfig:
    """The run config `launch.py train` would use for this shape, batch and length."""
    return apply_overrides(RunConfig(), [
        f"model.name_or_path={folder}",
        f"model.load_in={'4bit' if spec.method == 'qlora' else '16bit'}", f"lora.enabled={spec.method != 'full'}",
        f"lora.r={spec.rank}", f"lora.alpha={spec.rank}",
        f"train.batch_size={spec.batch}", "train.grad_accum=1",
        f"train.max_length={spec.length}", f"train.max_steps={total_steps(spec)}",
        "train.warmup_steps=0", "train.scheduler=constant", f"train.learning_rate={LEARNING_RATE}",
        "train.logging_steps=1", "train.gradient_checkpointing=true", f"train.seed={spec.seed}",
        f"train.method={spec.train_method}", *spec.overrides,
    ])


def token_rows(spec: BenchSpec, vocab: int) -> torch.Tensor:
    """(steps * batch, length) random token ids: every token real, every token trained."""
    generator = torch.Generator().manual_seed(spec.seed)
    count = total_steps(spec) * spec.batch * (2 if method_for(spec.train_method).shape is PAIRS else 1)
    return torch.randint(4, vocab, (count, spec.length), generator=generator)


def run_studio(spec: BenchSpec, folder: Path, rows: torch.Tensor) -> PathResult:
    cfg = studio_config(spec, folder)
    _reset_peaks()
    model = None
    try:
        model, tokenizer = load_for_training(cfg)
        profile_from = spec.warmup + spec.steps if spec.profile else None
        return train_studio(cfg, model, tokenizer, rows, spec.warmup, profile_from=profile_from)
    except torch.OutOfMemoryError as exc:
        result = PathResult("studio", error=f"out of memory: {str(exc).splitlines()[0]}")
        _record_peaks(result)
        return result
    finally:
        del model
        free_accelerator_memory()


def train_studio(cfg: RunConfig, model, tokenizer, rows: torch.Tensor, warmup: int,
                 profile_from: int | None = None) -> PathResult:
    """`len(rows) / batch` optimizer steps through the studio's trainer; peaks counted from the last reset.

    The steps after `warmup` are timed, up to `profile_from`; from that step on they run under the profiler."""
    from datasets import Dataset
    from datasets.table import InMemoryTable

    from studio.train.training import make_trainer

    result = PathResult("studio")
    dataset = Dataset(InMemoryTable.from_pydict(_columns(rows, method_for(cfg.train.method).shape)),
                      fingerprint=f"bench-{cfg.train.method}-{rows.shape[0]}x{rows.shape[1]}-{int(rows[0, 0])}")
    trainer = None
    try:
        with tempfile.TemporaryDirectory() as scratch:
            timer = _StepTimer(result, warmup, profile_from)
            trainer = make_trainer(cfg, Path(scratch), model, tokenizer, dataset, callbacks=[timer],
                                   save_strategy="no", train_sampling_strategy="sequential")
            with training_patches(cfg):  # as launch.py train runs it
                trainer.train()
        result.losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    except torch.OutOfMemoryError as exc:
        result.error = f"out of memory: {str(exc).splitlines()[0]}"
        model.zero_grad(set_to_none=True)  # the model is tried again at other lengths
    finally:
        _record_peaks(result)
        del trainer
        free_accelerator_memory()
    result.step_seconds = result.step_seconds[warmup:profile_from]
    return result


def _columns(rows: torch.Tensor, shape) -> dict[str, list]:
    """The rows in the method's shape: every token trained (a pair: one row's first half as the prompt,
    its second half chosen, the next row's second half rejected; each side as long as a row)."""
    ids, half = rows.tolist(), rows.shape[1] // 2
    if shape is PAIRS:
        return {"prompt_ids": [a[:half] for a in ids[0::2]], "chosen_ids": [a[half:] for a in ids[0::2]],
                "rejected_ids": [b[half:] for b in ids[1::2]]}
    if shape is LABELLED:
        return {"prompt_ids": [r[:half] for r in ids], "completion_ids": [r[half:] for r in ids],
                "label": [i % 2 == 0 for i in range(len(ids))]}
    return {"input_ids": ids, "labels": ids}


def run_reference(spec: BenchSpec, folder: Path, rows: torch.Tensor) -> PathResult:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    result = PathResult("reference")
    cuda = has_cuda()
    dtype = resolve_dtype("auto")  # what the studio path computes in too
    model = optimizer = None
    _reset_peaks()
    try:
        options = {"dtype": dtype, "device_map": {"": 0} if cuda else None, "trust_remote_code": False}
        if spec.method == "qlora":
            options["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=dtype)
        model = AutoModelForCausalLM.from_pretrained(folder, **options)
        checkpointing = {"use_reentrant": False}
        if spec.method == "qlora":
            model = prepare_model_for_kbit_training(model, gradient_checkpointing_kwargs=checkpointing)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
            model.enable_input_require_grads()
        torch.manual_seed(spec.seed)
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        model = get_peft_model(model, LoraConfig(r=spec.rank, lora_alpha=spec.rank, lora_dropout=0.0,
                                                 target_modules=targets, task_type="CAUSAL_LM"))
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=LEARNING_RATE, weight_decay=0.01, fused=cuda)
        device = "cuda" if cuda else "cpu"
        for batch in rows.split(spec.batch):
            batch = batch.to(device)
            _sync()
            started = time.perf_counter()
            with torch.autocast(device, dtype=dtype, enabled=cuda):
                loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            _sync()
            result.step_seconds.append(time.perf_counter() - started)
            result.losses.append(loss.item())
    except torch.OutOfMemoryError as exc:
        result.error = f"out of memory: {str(exc).splitlines()[0]}"
    finally:
        _record_peaks(result)
        del model, optimizer
        free_accelerator_memory()
    result.step_seconds = result.step_seconds[spec.warmup:spec.warmup + spec.steps]
    return result


class _StepTimer(TrainerCallback):
    """Wall time of every optimizer step, with the GPU's queue drained at both ends.

    The steps from `warmup` on are measured: NVML's busy reading covers them. From
    `profile_from` on, steps run under the torch profiler on CUDA (after the measured
    ones, since the profiler slows the host that launches the kernels), and the result
    gets their GPU time per kind of kernel.
    """

    def __init__(self, result: PathResult, warmup: int = 0, profile_from: int | None = None) -> None:
        self.result = result
        self.started = 0.0
        self.warmup = warmup
        self.profile_from = profile_from
        self.profiler = None
        self.measured_from = 0.0  # wall clock (NVML's timestamps count from the epoch)

    def on_step_begin(self, args, state, control, **kwargs):
        if has_cuda() and state.global_step == self.profile_from and self.profiler is None:
            self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA,
                                                               torch.profiler.ProfilerActivity.CPU])
            self.profiler.__enter__()
        _sync()
        if state.global_step == self.warmup:
            self.measured_from = time.time()
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        _sync()
        self.result.step_seconds.append(time.perf_counter() - self.started)
        if has_cuda() and state.global_step == (self.profile_from or state.max_steps):
            # the measured steps just ended: read before later steps push their samples out
            self.result.gpu_busy_percent = gpu_busy_percent(self.measured_from, time.time())

    def on_train_end(self, args, state, control, **kwargs):
        if self.profiler is not None:
            self.profiler.__exit__(None, None, None)
            self.result.profile = kernel_time_by_kind(self.profiler, steps=state.global_step - self.profile_from)
            self.result.profile["profiled_step_s"] = statistics.median(self.result.step_seconds[self.profile_from:])


# Kernel name fragments -> what the time was spent on (first match wins; Triton kernels,
# Liger's and TRL's loss, have no common prefix and fall to the last kind).
KERNEL_KINDS = (
    ("4-bit dequantize", ("dequantize",)),  # bitsandbytes' kernels or studio.speed's
    ("attention", ("flash", "fmha", "sdpa")),
    ("matrix multiply", ("gemm", "cutlass", "xmma", "nvjet", "cublas")),
    ("copies between CPU and GPU", ("memcpy htod", "memcpy dtoh")),
    ("copies and casts on the GPU", ("memcpy dtod", "copy_kernel", "memset")),
    ("8-bit optimizer", ("optimizer", "adam")),
    ("elementwise (adds, scales, activations)", ("at::native", "elementwise")),
)
TRITON_KIND = "fused Triton kernels (Liger, TRL's loss)"


def kernel_time_by_kind(profiler, steps: int) -> dict:
    """GPU milliseconds per step for each kind of kernel, and the ten costliest kernels; the host's too."""
    events = profiler.key_averages()  # aggregated once: on a profiled step that is seconds of work
    kernels = [e for e in events if _on_gpu(e)]
    def self_ms(event) -> float:
        return getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0)) / 1000 / max(steps, 1)

    by_kind: dict[str, float] = {}
    for event in kernels:
        name = event.key.lower()
        kind = next((k for k, fragments in KERNEL_KINDS if any(f in name for f in fragments)), TRITON_KIND)
        by_kind[kind] = by_kind.get(kind, 0.0) + self_ms(event)
    top = sorted(kernels, key=self_ms, reverse=True)[:10]
    # Where the Python launching them spends its time: the host's own share of a step that waits for it.
    host = [e for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CPU]
    def host_ms(event) -> float:
        return event.self_cpu_time_total / 1000 / max(steps, 1)

    return {
        # kernels on several streams overlap (copies beside compute): busy is the time any of them runs
        "busy_ms_per_step": busy_ms([e.time_range for e in kernels_of(profiler)]) / max(steps, 1),
        "host_ms_per_step": sum(host_ms(e) for e in host),
        "top_host_ops": [{"name": e.key[:120], "self_ms_per_step": host_ms(e), "calls_per_step": e.count / max(steps, 1)}
                         for e in sorted(host, key=host_ms, reverse=True)[:15]],
        "gpu_ms_per_step": sum(by_kind.values()),
        "by_kind_ms_per_step": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
        "top_kernels": [{"name": e.key[:120], "ms_per_step": self_ms(e), "calls_per_step": e.count / max(steps, 1)}
                        for e in top],
    }


def kernels_of(profiler) -> list:
    """Every GPU event the profiler recorded, one per launch (copies included)."""
    return [e for e in profiler.events() if _on_gpu(e)]


def _on_gpu(event) -> bool:
    """A kernel or copy that ran on the GPU. Not a named range drawn on the GPU's timeline: torch marks each
    optimizer step with one ("Optimizer.step#AdamW.step"), which spans its kernels and the gaps between them."""
    return (getattr(event, "device_type", None) == torch.autograd.DeviceType.CUDA
            and not getattr(event, "is_user_annotation", False))


def busy_ms(intervals) -> float:
    """Milliseconds covered by at least one of the intervals (objects with .start and .end in microseconds)."""
    total, reach = 0.0, float("-inf")
    for interval in sorted(intervals, key=lambda i: i.start):
        if interval.end <= reach:
            continue
        total += interval.end - max(interval.start, reach)
        reach = interval.end
    return total / 1000


def _sync() -> None:
    if has_cuda():
        torch.cuda.synchronize()


def _reset_peaks() -> None:
    free_accelerator_memory()
    if has_cuda():
        torch.cuda.reset_peak_memory_stats()


def _record_peaks(result: PathResult) -> None:
    if has_cuda():
        result.peak_allocated_gib = torch.cuda.max_memory_allocated() / GIB
        result.peak_reserved_gib = torch.cuda.max_memory_reserved() / GIB
