"""Will this training run fit in memory? An estimate before anything loads.

Counts weights (at the chosen precision), the trainable part with its
gradients and optimizer state, activations for the batch and length (with or
without checkpointing; both answers of a preference pair), the loss over the
vocabulary, and runtime overhead. The reference pass of dpo and kto runs
without gradients, after the step's own activations are freed, so it adds no peak.

    est = estimate_fit(shape, cfg, available_gib=11.6, on_gpu=True)
    est.verdict, est.advice    # "tight", "needs ≈10.9 GiB of 11.6 ..."
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from studio.catalog import Shape, find
from studio.config import PAIRED_METHODS, RunConfig
from studio.config_rules import optimizer_for
from studio.recipes import replace_section

GIB = 1024**3
WEIGHT_BYTES = {"16bit": 2.0, "8bit": 1.06, "4bit": 0.52}  # 4bit: nf4 plus double-quantized scales
CUDA_CONTEXT_GIB = 0.5  # the driver's context and cuBLAS workspace, outside PyTorch's allocator
ALLOCATOR_SLACK = 0.10  # cached blocks the allocator holds beyond what is in use

# Activation bytes per token, in multiples of hidden or intermediate width times the
# element size, fitted to peaks measured by `launch.py bench` on an H100 (Llama 3.2 1B/3B,
# Llama 3.1 8B from 2k to 128k tokens, Qwen2.5 1.5B, Gemma 3 1B; results/bench-h100.md):
# every estimate there is within 6% of the measured peak.
LAYER_WORKSET_HIDDEN = 12  # the one layer being recomputed: attention, norms, residuals, gradients
LAYER_WORKSET_INTERMEDIATE = 4  # its feed-forward tensors (capped by train.feed_forward_slice)
FP32_ADAPTER_HIDDEN = 6  # 16-bit LoRA keeps fp32 adapters, whose inputs are saved in fp32
NO_CHECKPOINT_HIDDEN = 7  # every layer's saved tensors, without checkpointing
NO_CHECKPOINT_INTERMEDIATE = 4
# Layer-wise GaLore steps each weight as its gradient arrives: the share of the whole
# gradient's memory still held at the peak, and GaLore's workspace per targeted weight
# (each update projected back to full size, the projection's SVD in fp32).
LAYERWISE_GRADIENT_SHARE = 0.35
GALORE_WORKSPACE_BYTES = 0.75


@dataclass(frozen=True)
class FitEstimate:
    weights_gib: float
    trainable_gib: float  # trainable weights, their gradients and optimizer state
    activations_gib: float
    overhead_gib: float  # CUDA context and allocator slack (or the Python process on a CPU)
    available_gib: float
    device: str

    @property
    def peak_gib(self) -> float:
        """What PyTorch allocates at the step's peak: the figure `launch.py bench` measures."""
        return self.weights_gib + self.trainable_gib + self.activations_gib

    @property
    def total_gib(self) -> float:
        return self.peak_gib + self.overhead_gib

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
    """Memory of a training step as the studio runs it (see studio.train.load_for_training)."""
    t = cfg.train
    linear, embeddings = parameter_counts(shape)
    # Without a GPU the studio computes in float32: twice the bytes of 16-bit.
    unit = 2.0 if on_gpu else 4.0
    weight_bytes = WEIGHT_BYTES[cfg.model.load_in] * (1 if on_gpu or cfg.model.load_in != "16bit" else 2)
    weights = linear * weight_bytes + embeddings * unit
    if on_gpu and cfg.lora.enabled and t.cpu_embeddings and not shape.tied_embeddings:
        weights -= shape.vocab * shape.hidden * unit  # the input table waits in CPU memory
    eight_bit_optimizer = on_gpu and "8bit" in optimizer_for(t.optimizer, on_gpu)  # LoRA's states
    state_bytes = 2.0 if eight_bit_optimizer else 8.0
    fp32_adapters = cfg.model.load_in == "16bit" or not on_gpu  # quantized bases train bf16 adapters
    if cfg.lora.enabled:
        adapter_bytes = 4.0 if fp32_adapters else 2.0
        trainable = lora_parameters(shape, cfg.lora.r) * (2 * adapter_bytes + state_bytes)
    else:
        trainable = _full_training(shape, cfg, linear, embeddings, unit, on_gpu)
    return FitEstimate(
        weights_gib=weights / GIB,
        trainable_gib=trainable / GIB,
        activations_gib=(_grpo_activations if t.method == "grpo" else _activations)(
            shape, cfg, unit, on_gpu, fp32_adapters) / GIB,
        overhead_gib=CUDA_CONTEXT_GIB + ALLOCATOR_SLACK * (weights + trainable) / GIB if on_gpu else 0.5,
        available_gib=available_gib,
        device="GPU" if on_gpu else "RAM",
    )


def _full_training(shape: Shape, cfg: RunConfig, linear: int, embeddings: int, unit: float, on_gpu: bool) -> float:
    """Bytes of every weight's gradient and optimizer state (full fine-tuning, galore included).

    Fitted to the peaks of the 1B shape measured on an H100 (results/methods-h100.md):
    AdamW keeps two states in the weights' dtype, and its multi-tensor step one more
    copy of them for a moment; 8-bit AdamW keeps the embedding table's states in 32 bits
    (transformers asks bitsandbytes to); GaLore keeps the targeted matrices' states at
    `galore.rank` rows, plus a workspace for projecting each update back.
    """
    t, g = cfg.train, cfg.galore
    params = linear + embeddings
    gradients = params * unit
    if t.method != "galore":
        if on_gpu and t.optimizer in ("auto", "adamw_8bit", "paged_adamw_8bit"):
            return gradients + linear * 2.0 + embeddings * 8.0
        return gradients + params * 3 * unit  # two states and the step's temporary copy
    state_unit = 1.0 if g.optimizer == "adamw_8bit" and on_gpu else unit
    if g.layerwise:
        gradients *= LAYERWISE_GRADIENT_SHARE
    projected = shape.layers * g.rank * _projected_rows(shape)
    return gradients + 2 * state_unit * (embeddings + projected) + GALORE_WORKSPACE_BYTES * linear


def _projected_rows(shape: Shape) -> int:
    """Rows of one layer's GaLore states: each matrix is projected along its shorter side."""
    q_out, kv_out = shape.heads * shape.dim_per_head, shape.kv_heads * shape.dim_per_head
    h, i = shape.hidden, shape.intermediate
    return max(h, q_out) * 2 + max(h, kv_out) * 2 + max(h, i) * 3


def _activations(shape: Shape, cfg: RunConfig, unit: float, on_gpu: bool, fp32_adapters: bool) -> float:
    t = cfg.train
    h, i = shape.hidden, shape.intermediate
    rows = t.batch_size * (2 if t.method in PAIRED_METHODS else 1)  # a pair's two answers side by side
    tokens = rows * t.max_length
    if t.gradient_checkpointing:
        offloaded = on_gpu and (t.offload_activations or _offloads_layer_inputs(cfg, on_gpu))
        per_token = (0 if offloaded else shape.layers * h) + LAYER_WORKSET_HIDDEN * h
        if cfg.lora.enabled and fp32_adapters:
            per_token += FP32_ADAPTER_HIDDEN * h
        sliced = t.feed_forward_slice if 0 < t.feed_forward_slice < t.max_length else t.max_length
        activations = (tokens * per_token + rows * sliced * LAYER_WORKSET_INTERMEDIATE * i) * unit
    else:
        activations = tokens * shape.layers * (NO_CHECKPOINT_HIDDEN * h + NO_CHECKPOINT_INTERMEDIATE * i) * unit
    if not on_gpu:
        activations += tokens * 4 * shape.vocab  # the CPU scores the loss a row of fp32 logits at a time
    return activations


def _grpo_activations(shape: Shape, cfg: RunConfig, unit: float, on_gpu: bool, fp32_adapters: bool) -> float:
    """grpo's peak: the larger of generating the step's completions and training on them (they do not overlap).

    Generating: every completion of the step at once (train.batch_size x train.grad_accum sequences of up to
    train.max_length prompt tokens plus grpo.max_completion_length), holding a KV cache (keys and values of
    every layer at every position) and the newest position's logits in fp32 (and their probabilities) while
    sampling. Training: train.batch_size of those sequences at a time, counted as sft counts a row. The
    reference pass (grpo.beta > 0) runs without gradients in between: no peak of its own.
    """
    t, g = cfg.train, cfg.grpo
    length = t.max_length + g.max_completion_length
    sequences = t.batch_size * t.grad_accum
    kv_cache = sequences * length * shape.layers * 2 * shape.kv_heads * shape.dim_per_head * unit
    sampling = sequences * shape.vocab * 4 * 2
    training = _activations(shape, replace_section(cfg, "train", max_length=length), unit, on_gpu, fp32_adapters)
    return max(kv_cache + sampling, training)


def advice(shape: Shape, cfg: RunConfig, est: FitEstimate, on_gpu: bool) -> str:
    """One sentence: the verdict, the numbers, and what to change when it does not fit."""
    head = f"needs ≈{est.total_gib:.1f} GiB of {est.available_gib:.1f} GiB {est.device}"
    if est.verdict == "fits":
        return f"Fits: {head}."
    tips = []
    if cfg.model.load_in != "4bit" and cfg.lora.enabled:
        four = estimate_fit(shape, replace_section(cfg, "model", load_in="4bit"), est.available_gib, on_gpu)
        tips.append(f"4-bit loading (≈{four.total_gib:.1f} GiB)")
    if not cfg.train.gradient_checkpointing:
        ckpt = estimate_fit(shape, replace_section(cfg, "train", gradient_checkpointing=True), est.available_gib, on_gpu)
        tips.append(f"gradient checkpointing (≈{ckpt.total_gib:.1f} GiB)")
    elif on_gpu and not cfg.train.offload_activations and not _offloads_layer_inputs(cfg, on_gpu):
        offload = estimate_fit(shape, replace_section(cfg, "train", offload_activations=True), est.available_gib, on_gpu)
        tips.append(f"activation offload to CPU memory (≈{offload.total_gib:.1f} GiB)")
    if on_gpu and cfg.lora.enabled and not cfg.train.cpu_embeddings and not shape.tied_embeddings:
        table = estimate_fit(shape, replace_section(cfg, "train", cpu_embeddings=True), est.available_gib, on_gpu)
        tips.append(f"input embeddings in CPU memory (≈{table.total_gib:.1f} GiB)")
    if cfg.train.max_length > 256:
        half = cfg.train.max_length // 2
        short = estimate_fit(shape, replace_section(cfg, "train", max_length=half), est.available_gib, on_gpu)
        tips.append(f"max length {half} (≈{short.total_gib:.1f} GiB)")
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


def capped_gib(available_gib: float, cfg: RunConfig) -> float:
    """What one GPU offers a run under train.gpu_memory_cap (0: no cap)."""
    cap = cfg.train.gpu_memory_cap
    return min(available_gib, cap) if cap else available_gib


def sharded(est: FitEstimate, shards: int) -> FitEstimate:
    """One card's share when FSDP splits the weights, gradients and optimizer states over `shards` cards.

    Each card still holds its own rows' activations whole (and gathers one layer's weights at a time).
    """
    return replace(est, weights_gib=est.weights_gib / shards, trainable_gib=est.trainable_gib / shards)


def check_fit(cfg: RunConfig, available_gib: float, on_gpu: bool, shards: int = 1,
              engine: str = "single") -> tuple[FitEstimate | None, str]:
    """The estimate (one card's, with `shards` cards sharing the model under `engine`) and its sentence, or None
    with the reason when the model's shape is unknown."""
    shape = shape_of(cfg.model.name_or_path)
    if shape is None:
        return None, "Size unknown until the model is loaded (not in the catalog and not a local folder)."
    from studio.train.placement import SPLIT_STATE_ENGINES

    if engine in SPLIT_STATE_ENGINES and cfg.train.optimizer == "auto":
        # These step 32-bit AdamW (studio.train.methods.arguments.optimizer_name): four times 8-bit's states.
        cfg = replace_section(cfg, "train", optimizer="adamw_torch")
    est = estimate_fit(shape, cfg, available_gib, on_gpu)
    if shards > 1:
        est = sharded(est, shards)
    return est, advice(shape, cfg, est, on_gpu)


def _offloads_layer_inputs(cfg: RunConfig, on_gpu: bool) -> bool:
    from studio.speed.offload_inputs import offloads_layer_inputs  # imports torch: only when estimating

    return offloads_layer_inputs(cfg, on_gpu)
