"""What machine we are on, which dtype to use, and how much memory is in use.

`MemoryProbe` reads torch's CUDA allocator, NVML (the driver's view: used,
total, utilisation, temperature) and psutil (process and system RAM). NVML is
optional: on a machine without an NVIDIA driver the GPU fields stay None.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import psutil

# Training allocates tensors of many sizes that change from row to row; growable segments
# keep the CUDA allocator from fragmenting (set before torch makes its first allocation).
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch  # noqa: E402

GIB = 1024**3


def has_cuda() -> bool:
    return torch.cuda.is_available()


def local_rank() -> int:
    """This process's place among the training processes of its machine (0 when training alone).

    Set by torch.distributed.run for each process it starts (studio.train.parallel starts them).
    """
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    """How many processes train together (1 when training alone)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def process_rank() -> int:
    """This process's number among all the training processes (0 when training alone)."""
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """The process that writes the run's files (rank 0; the only one when training alone)."""
    return process_rank() == 0


def visible_gpus(env: dict | None = None) -> list[str]:
    """The GPUs CUDA_VISIBLE_DEVICES lists (in `env`, else this process's), in CUDA's order; [] when unset."""
    value = (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES", "")
    return [d.strip() for d in value.split(",") if d.strip()]


def parallel_engine() -> str:
    """How this process shares the work with others: single, ddp, fsdp, deepspeed-zero2 or deepspeed-zero3."""
    return os.environ.get("STUDIO_PARALLEL", "ddp") if world_size() > 1 else "single"


def sharded_training() -> bool:
    """This process is one of several that shard the model (FSDP), rather than each holding all of it."""
    return parallel_engine() == "fsdp"


def split_states() -> bool:
    """This process is one of several that split the optimizer states among them (FSDP or DeepSpeed ZeRO)."""
    from studio.train.placement import SPLIT_STATE_ENGINES

    return parallel_engine() in SPLIT_STATE_ENGINES


def cap_gpu_memory(cap_gib: float) -> None:
    """Let this process's allocator use at most `cap_gib` of its GPU (0 or more than the card: all of it)."""
    if not has_cuda():
        return
    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / GIB
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib / total) if cap_gib > 0 else 1.0)


def device_name() -> str:
    """"NVIDIA GeForce RTX 4090" or "CPU only"."""
    return torch.cuda.get_device_name(0) if has_cuda() else "CPU only"


def resolve_dtype(name: str) -> torch.dtype:
    """The compute dtype for a config value ('auto' picks what the device does well)."""
    if name != "auto":
        return getattr(torch, name)
    if not has_cuda():
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@dataclass(frozen=True)
class MemorySnapshot:
    """Memory in GiB (None where the source does not exist on this machine)."""

    gpu_allocated: float | None = None
    gpu_reserved: float | None = None
    gpu_peak: float | None = None
    gpu_used: float | None = None
    gpu_total: float | None = None
    gpu_util_percent: float | None = None
    gpu_temp_c: float | None = None
    process_rss: float = 0.0
    ram_used: float = 0.0
    ram_total: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class MemoryProbe:
    """Reads memory from torch, NVML and psutil. Create one and keep it (NVML init is not free)."""

    def __init__(self) -> None:
        self._process = psutil.Process(os.getpid())
        self._nvml_handle = None
        if has_cuda():
            self._nvml_handle = _nvml_handle(_physical_index(torch.cuda.current_device()))

    def snapshot(self) -> MemorySnapshot:
        vm = psutil.virtual_memory()
        fields: dict = {
            "process_rss": self._process.memory_info().rss / GIB,
            "ram_used": (vm.total - vm.available) / GIB,
            "ram_total": vm.total / GIB,
        }
        if has_cuda():
            fields.update(
                gpu_allocated=torch.cuda.memory_allocated() / GIB,
                gpu_reserved=torch.cuda.memory_reserved() / GIB,
                gpu_peak=torch.cuda.max_memory_allocated() / GIB,
            )
        if self._nvml_handle is not None:
            fields.update(_nvml_readings(self._nvml_handle))
        return MemorySnapshot(**fields)


def _physical_index(cuda_index: int) -> int:
    """NVML counts every GPU of the machine; CUDA only those CUDA_VISIBLE_DEVICES lists."""
    visible = visible_gpus()
    if cuda_index < len(visible) and visible[cuda_index].isdigit():
        return int(visible[cuda_index])
    return cuda_index


def _nvml_handle(index: int):
    import pynvml

    try:
        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetHandleByIndex(index)
    except pynvml.NVMLError:
        return None  # no driver library (containers, WSL without NVML): torch readings still work


def _nvml_readings(handle) -> dict:
    import pynvml

    try:
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        util = pynvml.nvmlDeviceGetUtilizationRates(handle)
        temp = pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
    except pynvml.NVMLError:
        return {}
    return {"gpu_used": mem.used / GIB, "gpu_total": mem.total / GIB, "gpu_util_percent": float(util.gpu), "gpu_temp_c": float(temp)}


def gpu_busy_percent(start_s: float, end_s: float) -> float | None:
    """NVML's share of time a kernel ran on this process's GPU between two wall-clock times, in percent.

    The driver samples it every 1/6 to 1 s, each sample covering the period before it, so the window
    needs a few of those periods; a profiler-free check of what `launch.py bench --profile` counts."""
    import pynvml

    handle = _nvml_handle(_physical_index(torch.cuda.current_device())) if has_cuda() else None
    if handle is None:
        return None
    try:
        _, samples = pynvml.nvmlDeviceGetSamples(handle, pynvml.NVML_GPU_UTILIZATION_SAMPLES, int(start_s * 1e6))
    except pynvml.NVMLError:
        return None  # not every driver or virtual GPU keeps samples
    within = [s.sampleValue.uiVal for s in samples if start_s * 1e6 <= s.timeStamp <= end_s * 1e6]
    return sum(within) / len(within) if within else None


def free_accelerator_memory() -> None:
    """Return cached blocks to the driver after a model is dropped."""
    import gc

    gc.collect()
    if has_cuda():
        torch.cuda.empty_cache()
