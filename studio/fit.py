"""Will this training run fit in memory? An estimate before anything loads.

Counts weights (at the chosen precision), the trainable part with its
gradients and optimizer state, activations for the batch and length (with or
without checkpointing), the loss over the vocabulary, and runtime overhead.

    est = estimate_fit(shape, cfg, available_gib=11.6, on_gpu=True)
    est.verdict, est.advice    # "tight", "needs ~10.9 GiB of 11.6 ..."
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from studio.catalog import Shape, find
from studio.config import RunConfig, apply_overrides

GIB = 1024**3
WEIGHT_BYTES = {"16bit": 2.0, "8bit": 1.06, "4bit": 0.56}  # 4bit: nf4 plus double-quantized scales
CUDA_OVERHEAD_GIB = 0.8  # context, cuBLAS workspace, allocator slack


@dataclass(frozen=True)
class FitEstimate:
    weights_gib: float
    trainable_gib: float  # trainable weights' gradients and optimizer state (and fp32 adapter weights)
    activations_gib: float
    overhead_gib: float
    available_gib: float
    device: str

    @property
    def total_gib(self) -> float:
        return self.weights_gib + self.trainable_gib + self.activations_gib + self.overhead_gib

    @property
    def verdict(self) -> str:
        if self.total_gib <= 0.85 * self.available_gib:
            return "fits"
        return "tight" if self.total_gib <= self.available_gib else "does not fit"


def parameter_counts(shape: Shape) -> tuple[int, int]:
    """(parameters inside the transformer layers' linear maps, embedding + output head parameters)."""
    q_out, kv_out = shape.heads * shape.dim_per_head, shape.kv_heads * shape.dim_per_head
    attention = shape.hidden * q_out * 2 + shape.hidden * kv_out * 2
    mlp = 3 * shape.hidden * shape.intermediate
    embeddings = shape.vocab * shape.hidden * (1 if shape.tied_embeddings else 2)
    return shape.layers * (attention + mlp), embeddings


def lora_parameters(shape: Shape, r: int) -> int:
    """Adapter parameters for LoRA on all seven projections of every layer."""
    h, i = shape.hidden, shape.intermediate
    q_out, kv_out = shape.heads * shape.dim_per_head, shape.kv_heads * shape.dim_per_head
    per_layer = r * ((h + q_out) * 2 + (h + kv_out) * 2 + (h + i) * 3)
    return shape.layers * per_layer


def estimate_fit(shape: Shape, cfg: RunConfig, available_gib: float, on_gpu: bool) -> FitEstimate:
    linear, embeddings = parameter_counts(shape)
    # Without a GPU the studio computes in float32: twice the bytes of 16-bit.
    unit = 2.0 if on_gpu else 4.0
    weight_bytes = WEIGHT_BYTES[cfg.model.load_in] * (1 if on_gpu or cfg.model.load_in != "16bit" else 2)
    weights = linear * weight_bytes + embeddings * unit
    eight_bit_optimizer = on_gpu and cfg.train.optimizer in ("auto", "adamw_8bit", "paged_adamw_8bit")
    state_bytes = 2.0 if eight_bit_optimizer else 8.0
    if cfg.lora.enabled:
        trainable = lora_parameters(shape, cfg.lora.r) * (4 + 4 + state_bytes)  # fp32 weights and grads
    else:
        trainable = (linear + embeddings) * (unit + (state_bytes if on_gpu else 8.0))
    tokens = cfg.train.batch_size * cfg.train.max_length
    full_layer = (12 * shape.hidden + 5 * shape.intermediate) * unit  # bytes per token kept for backward
    per_token = (shape.layers * 2 * shape.hidden * unit + full_layer) if cfg.train.gradient_checkpointing \
        else shape.layers * full_layer
    logits = 4 * shape.vocab  # one fp32 row of the vocabulary per token in the loss
    activations = tokens * (per_token + logits)
    return FitEstimate(
        weights_gib=weights / GIB,
        trainable_gib=trainable / GIB,
        activations_gib=activations / GIB,
        overhead_gib=CUDA_OVERHEAD_GIB if on_gpu else 0.5,
        available_gib=available_gib,
        device="GPU" if on_gpu else "RAM",
    )


def advice(shape: Shape, cfg: RunConfig, est: FitEstimate, on_gpu: bool) -> str:
    """One sentence: the verdict, the numbers, and what to change when it does not fit."""
    head = f"needs ~{est.total_gib:.1f} GiB of {est.available_gib:.1f} GiB {est.device}"
    if est.verdict == "fits":
        return f"Fits: {head}."
    tips = []
    if cfg.model.load_in != "4bit" and cfg.lora.enabled:
        four = estimate_fit(shape, apply_overrides(cfg, ["model.load_in=4bit"]), est.available_gib, on_gpu)
        tips.append(f"4-bit loading (~{four.total_gib:.1f} GiB)")
    if not cfg.train.gradient_checkpointing:
        ckpt = estimate_fit(shape, apply_overrides(cfg, ["train.gradient_checkpointing=true"]), est.available_gib, on_gpu)
        tips.append(f"gradient checkpointing (~{ckpt.total_gib:.1f} GiB)")
    if cfg.train.max_length > 256:
        half = cfg.train.max_length // 2
        short = estimate_fit(shape, apply_overrides(cfg, [f"train.max_length={half}"]), est.available_gib, on_gpu)
        tips.append(f"max length {half} (~{short.total_gib:.1f} GiB)")
    verdict = "Tight" if est.verdict == "tight" else "Does not fit"
    return f"{verdict}: {head}." + (f" Try {', or '.join(tips)}." if tips else "")


def shape_of(name_or_path: str) -> Shape | None:
    """The model's shape from the catalog or its local config.json (None when unknown offline)."""
    known = find(name_or_path)
    if known:
        return known.shape
    path = Path(name_or_path)
    if path.suffix == ".gguf":  # known once it has been loaded (and dequantized) one time
        from studio.models import data_home

        cached = sorted((data_home() / "cache" / "dequantized").glob(f"{path.stem}-*/config.json"))
        path = cached[-1].parent if cached else path
    config_file = path / "config.json"
    if not config_file.is_file():
        return None
    config = json.loads(config_file.read_text())
    config = config.get("text_config", config)
    heads = config["num_attention_heads"]
    return Shape(
        hidden=config["hidden_size"], layers=config["num_hidden_layers"], heads=heads,
        kv_heads=config.get("num_key_value_heads") or heads, intermediate=config["intermediate_size"],
        vocab=config["vocab_size"], tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        head_dim=config.get("head_dim") or 0,
    )


def check_fit(cfg: RunConfig, available_gib: float, on_gpu: bool) -> tuple[FitEstimate | None, str]:
    """The estimate and its sentence, or None with the reason when the model's shape is unknown."""
    shape = shape_of(cfg.model.name_or_path)
    if shape is None:
        return None, "Size unknown until the model is loaded (not in the catalog and not a local folder)."
    est = estimate_fit(shape, cfg, available_gib, on_gpu)
    return est, advice(shape, cfg, est, on_gpu)
