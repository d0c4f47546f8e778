"""From step times and peaks to the numbers people compare: tokens/s, TFLOP/s, MFU, GiB, ratios."""

from __future__ import annotations

import platform
import time
from dataclasses import asdict

from studio.config import PAIRED_METHODS
from studio.bench.paths import BenchSpec, PathResult


def flops_per_token(config, length: int) -> float:
    """Useful training FLOPs per token for LoRA on a frozen base.

    Forward is 2 FLOPs per weight; backward only needs the activations'
    gradients (frozen weights get none): 2 more. So 4 x the parameters inside
    matmuls (output head included, embeddings are a lookup), plus causal
    attention: QK^T and AV over on average half the sequence, forward and its
    two backward matmuls. Recomputation under checkpointing is not counted.
    """
    config = config.get_text_config()
    hidden, layers = config.hidden_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q_width = config.num_attention_heads * head_dim
    kv_width = config.num_key_value_heads * head_dim
    per_layer = 2 * hidden * q_width + 2 * hidden * kv_width + 3 * hidden * config.intermediate_size
    matmul_parameters = layers * per_layer + config.vocab_size * hidden
    attention = layers * 6 * length * q_width
    return 4 * matmul_parameters + attention


def matmul_ceiling_tflops() -> float | None:
    """What this GPU's bf16 matrix units really deliver (a large square matmul): MFU's denominator."""
    import torch

    if not torch.cuda.is_available():
        return None
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    repeats = 20
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / repeats
    del a, b
    torch.cuda.empty_cache()
    return 2 * n**3 / seconds / 1e12


def summarize(result: PathResult, spec: BenchSpec, flops: float, ceiling: float | None) -> dict:
    """One path's row: measured numbers plus the derived ones."""
    row = asdict(result)
    step = result.median_step_s
    # A preference pair is two sequences of spec.length tokens (its prompt read on both sides).
    sequences = 2 if spec.train_method in PAIRED_METHODS else 1
    tokens_per_s = spec.batch * sequences * spec.length / step if step else None
    tflops = tokens_per_s * flops / 1e12 if tokens_per_s else None
    row.update(
        median_step_s=step,
        tokens_per_s=tokens_per_s,
        tflops=tflops,
        mfu=tflops / ceiling if tflops and ceiling else None,
    )
    return row


def environment() -> dict:
    """Versions and hardware, so a shared result says what produced it."""
    import importlib.metadata as md

    import torch

    versions = {}
    for package in ("torch", "transformers", "peft", "trl", "bitsandbytes", "liger-kernel", "accelerate"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    total = torch.cuda.get_device_properties(0).total_memory / 1024**3 if gpu else None
    return {"gpu": gpu, "gpu_memory_gib": total, "cuda": torch.version.cuda, "python": platform.python_version(),
            "versions": versions}


def table(rows: list[dict]) -> str:
    """A markdown table: one line per path, the last column relative to the reference."""
    reference = next((r for r in rows if r["path"] == "reference" and r["tokens_per_s"]), None)
    lines = ["| path | tokens/s | TFLOP/s | MFU | peak alloc GiB | peak reserved GiB | vs reference | loss first -> last |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["error"]:
            lines.append(f"| {r['path']} | {r['error']} | | | {_num(r['peak_allocated_gib'], 1)} | "
                         f"{_num(r['peak_reserved_gib'], 1)} | | |")
            continue
        ratio = f"{r['tokens_per_s'] / reference['tokens_per_s']:.2f}x" if reference and r["tokens_per_s"] else ""
        losses = f"{r['losses'][0]:.3f} -> {r['losses'][-1]:.3f}" if r["losses"] else ""
        lines.append(
            f"| {r['path']} | {_num(r['tokens_per_s'], 0)} | {_num(r['tflops'], 1)} | "
            f"{_percent(r['mfu'])} | {_num(r['peak_allocated_gib'], 2)} | {_num(r['peak_reserved_gib'], 2)} | "
            f"{ratio} | {losses} |"
        )
    return "\n".join(lines)


def _num(value, digits: int) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _percent(value) -> str:
    return "n/a" if value is None else f"{value:.0%}"
