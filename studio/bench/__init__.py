"""Benchmark the studio's training path against the textbook one, on one GPU (or CPU).

    spec = BenchSpec("llama-3.1-8b", "qlora", batch=2, length=2048)
    report = run_bench(spec)                       # both paths, same rows
    report = longest_sequence(spec, cap_gib=24)    # batch 1, under a memory cap
    save_report(report, Path("bench/8b.json"))     # .json plus a .md table

Run as:  python launch.py bench llama-3.1-8b --method qlora --batch 2 --length 2048
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

from studio.bench.paths import BenchSpec, run_reference, run_studio, studio_config, token_rows, train_studio
from studio.bench.report import environment, flops_per_token, matmul_ceiling_tflops, summarize, table
from studio.bench.shapes import BENCH_SHAPES, random_checkpoint
from studio.errors import ConfigError
from studio.train.training import load_for_training

__all__ = ["BENCH_SHAPES", "BenchSpec", "describe", "longest_sequence", "model_folder", "run_bench", "save_report"]


def model_folder(model: str) -> Path:
    """A named shape's random checkpoint, or a real model folder as given."""
    if model in BENCH_SHAPES:
        return random_checkpoint(model)
    folder = Path(model)
    if not (folder / "config.json").is_file():
        raise ConfigError(f"'{model}' is neither a known shape ({', '.join(BENCH_SHAPES)}) nor a model folder.")
    return folder


def run_bench(spec: BenchSpec, reference: bool = True, progress=print) -> dict:
    """Train `spec.steps` measured steps on each path; the report holds both and their ratio."""
    from transformers import AutoConfig

    folder = model_folder(spec.model)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    rows = token_rows(spec, config.get_text_config().vocab_size)
    ceiling = matmul_ceiling_tflops()
    flops = flops_per_token(config, spec.length)
    results = []
    for name, run in (("studio", run_studio), ("reference", run_reference)):
        if name == "reference" and not (reference and spec.train_method == "sft" and spec.method != "full"):
            continue  # the textbook path is LoRA SFT
        progress(f"{name}: {spec.warmup} warm-up + {spec.steps} measured steps of {spec.batch} x {spec.length} tokens")
        started = time.perf_counter()
        result = run(spec, folder, rows)
        progress(f"{name}: done in {time.perf_counter() - started:.0f} s" + (f" ({result.error})" if result.error else ""))
        results.append(summarize(result, spec, flops, ceiling))
    return {
        "kind": "throughput",
        "spec": asdict(spec),
        "flops_per_token": flops,
        "matmul_ceiling_tflops": ceiling,
        "environment": environment(),
        "results": results,
        "loss_difference": _loss_difference(results),
    }


def longest_sequence(spec: BenchSpec, cap_gib: float, start: int = 16384, step: int = 8192,
                     limit: int = 131072, progress=print) -> dict:
    """The longest row (batch 1) the studio's path trains in `cap_gib` of GPU memory.

    The cap is enforced by the allocator (what a smaller card would refuse);
    lengths double until one fails, then bisect down to `step` tokens.
    """
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("The longest-sequence search needs a CUDA GPU.")
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * 1024**3 / total))
    try:
        spec, good, trials = _search_lengths(spec, start, step, limit, progress)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)  # the cap must not outlive the search
    return {
        "kind": "longest_sequence",
        "spec": asdict(spec),
        "cap_gib": cap_gib,
        "longest_length": good,
        "limit_reached": good == limit,
        "trials": trials,
        "environment": environment(),
    }


def _search_lengths(spec: BenchSpec, start: int, step: int, limit: int, progress) -> tuple[BenchSpec, int, list[dict]]:
    """Double the row length until a step fails, then bisect; the model is loaded once for all trials."""
    folder = model_folder(spec.model)
    spec = replace(spec, batch=1, warmup=0, steps=1)
    model, tokenizer = load_for_training(studio_config(spec, folder))
    vocab = model.config.get_text_config().vocab_size
    trials: list[dict] = []

    def fits(length: int) -> bool:
        trial = replace(spec, length=length)
        started = time.perf_counter()
        result = train_studio(studio_config(trial, folder), model, tokenizer, token_rows(trial, vocab), warmup=0)
        ok = result.error is None
        trials.append({"length": length, "fits": ok, "peak_allocated_gib": result.peak_allocated_gib,
                       "peak_reserved_gib": result.peak_reserved_gib, "step_s": result.median_step_s,
                       "error": result.error})
        progress(f"length {length}: {'fits' if ok else 'does not fit'} "
                 f"(peak {result.peak_reserved_gib or 0:.1f} GiB reserved, {time.perf_counter() - started:.0f} s)")
        return ok

    good, bad = 0, None
    length = start
    while fits(length):
        good = length
        if length == limit:
            break
        length = min(length * 2, limit)
    else:
        bad = length
    while bad is not None and bad - good > step:
        middle = (good + bad) // 2 // step * step
        if fits(middle):
            good = middle
        else:
            bad = middle
    return spec, good, trials


def save_report(report: dict, out: Path) -> Path:
    """Write the report as JSON and a markdown table beside it; returns the JSON path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(describe(report) + "\n")
    return out


def describe(report: dict) -> str:
    """What a person reads: the setup in one line, then the table (or the search's verdict)."""
    spec, env = report["spec"], report["environment"]
    where = env["gpu"] or "CPU"
    method = spec.get("train_method", "sft")
    head = (f"{spec['model']} {spec['method']}{'' if method == 'sft' else ' ' + method}, batch {spec['batch']}, length {spec['length']}, "
            f"LoRA r{spec['rank']}, on {where}") + (f"; studio path with {' '.join(spec['overrides'])}"
                                                     if spec["overrides"] else "")
    if report["kind"] == "longest_sequence":
        tried = ", ".join(f"{t['length']} {'ok' if t['fits'] else 'no'}" for t in report["trials"])
        at_least = "at least " if report["limit_reached"] else ""
        return (f"{spec['model']} {spec['method']}, batch 1, on {where}: longest trainable sequence under "
                f"{report['cap_gib']:g} GiB: {at_least}{report['longest_length']:,} tokens (tried {tried}).")
    lines = [head, "", table(report["results"])]
    if report["matmul_ceiling_tflops"]:
        lines.append(f"\nMFU against this GPU's measured bf16 matmul ceiling, "
                     f"{report['matmul_ceiling_tflops']:.0f} TFLOP/s.")
    if report["loss_difference"] is not None:
        lines.append(f"Largest per-step loss difference between the paths: {report['loss_difference']:.4f}.")
    for result in report["results"]:
        if result.get("profile"):
            profile = result["profile"]
            lines.append(f"\nGPU time per step on the {result['path']} path{_busy_share(result)}: "
                         + ", ".join(f"{kind} {ms:.0f} ms" for kind, ms in profile["by_kind_ms_per_step"].items()) + ".")
            if profile.get("top_host_ops"):
                lines.append(f"Host (CPU) time of its operations, {profile['host_ms_per_step']:.0f} ms a step; the costliest: "
                             + ", ".join(f"{op['name']} {op['self_ms_per_step']:.1f} ms ({op['calls_per_step']:.0f} calls)"
                                         for op in profile["top_host_ops"][:8]) + ".")
        if result.get("gpu_busy_percent") is not None:
            lines.append(f"NVML read the GPU busy {result['gpu_busy_percent']:.0f}% of the {result['path']} path's "
                         f"measured steps (a kernel running; sampled by the driver, no profiler).")
    return "\n".join(lines)


def _busy_share(result: dict) -> str:
    """The profiled steps' busy time beside their wall time and the measured (unprofiled) step's."""
    profile, step_ms = result["profile"], result["median_step_s"] * 1000
    if "busy_ms_per_step" not in profile:  # reports from before the profiled steps came after the measured ones
        return f" ({profile['gpu_ms_per_step']:.0f} ms busy of {step_ms:.0f} ms)"
    # Not a share of the measured step: profiling lengthens short kernels too (1B LoRA: 172 ms of kernels
    # against a 164 ms unprofiled step). NVML's reading, below, is the busy share.
    return (f" (kernels running {profile['busy_ms_per_step']:.0f} ms of a {profile['profiled_step_s'] * 1000:.0f} ms "
            f"profiled step; unprofiled, the measured steps took {step_ms:.0f} ms: the profiler slows the host "
            f"that launches the kernels)")


def _loss_difference(results: list[dict]) -> float | None:
    by_path = {r["path"]: r["losses"] for r in results if r["losses"]}
    if len(by_path) < 2:
        return None
    studio, reference = by_path["studio"], by_path["reference"]
    return max(abs(a - b) for a, b in zip(studio, reference))
