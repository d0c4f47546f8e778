"""Real model shapes with random weights: throughput and memory without a download.

Speed and memory depend on a model's shape, not on its weight values, so the
benchmark writes a checkpoint of the published shape filled with random
numbers (shard by shard, so an 8B model never sits whole in memory) and then
loads it the way a real model is loaded.

    folder = random_checkpoint("llama-3.1-8b")    # cached under data/cache/bench/
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from studio.catalog import (
    GEMMA_3_1B,
    GEMMA_3_270M,
    LLAMA_3_1_8B,
    LLAMA_3_2_1B,
    LLAMA_3_2_3B,
    QWEN2_5_1_5B,
    QWEN2_5_7B,
    QWEN3_8B,
    Shape,
)
from studio.errors import ConfigError

# name -> (transformers model_type, shape)
BENCH_SHAPES: dict[str, tuple[str, Shape]] = {
    "llama-3.2-1b": ("llama", LLAMA_3_2_1B),
    "llama-3.2-3b": ("llama", LLAMA_3_2_3B),
    "llama-3.1-8b": ("llama", LLAMA_3_1_8B),
    "qwen2.5-1.5b": ("qwen2", QWEN2_5_1_5B),
    "qwen2.5-7b": ("qwen2", QWEN2_5_7B),
    "qwen3-8b": ("qwen3", QWEN3_8B),
    "gemma-3-270m": ("gemma3_text", GEMMA_3_270M),
    "gemma-3-1b": ("gemma3_text", GEMMA_3_1B),
    # Small enough for a CPU: what the tests run.
    "tiny-llama": ("llama", Shape(256, 2, 4, 2, 512, 2048, False, 64)),
}
SHARD_BYTES = 2 * 1024**3


def shape_config(name: str):
    """A transformers config of the named shape (long context allowed, bf16)."""
    from transformers import AutoConfig

    if name not in BENCH_SHAPES:
        raise ConfigError(f"Unknown shape '{name}'. Known shapes: {', '.join(BENCH_SHAPES)} (or pass a model folder).")
    model_type, shape = BENCH_SHAPES[name]
    return AutoConfig.for_model(
        model_type,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.dim_per_head,
        intermediate_size=shape.intermediate,
        vocab_size=shape.vocab,
        tie_word_embeddings=shape.tied_embeddings,
        max_position_embeddings=262144,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        dtype="bfloat16",
    )


def random_checkpoint(name: str, cache: Path | None = None) -> Path:
    """A folder loadable with from_pretrained: the named shape, random weights, a token-id-only tokenizer."""
    from studio.models import data_home

    folder = (cache or data_home() / "cache" / "bench") / name
    if (folder / "complete").is_file():
        return folder
    config = shape_config(name)
    partial = folder.with_name(folder.name + ".part")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    config.save_pretrained(partial)
    _write_random_weights(config, partial)
    _minimal_tokenizer().save_pretrained(partial)
    (partial / "complete").write_text("ok\n")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder


def _write_random_weights(config, folder: Path) -> None:
    """Safetensors shards of N(0, 0.02) matrices and unit norms, generated and written one shard at a time."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    shapes = {key: meta.shape for key, meta in skeleton.state_dict().items()
              if not (config.tie_word_embeddings and key == "lm_head.weight")}
    plan: list[list[str]] = [[]]
    size = 0
    for key, shape in shapes.items():
        nbytes = shape.numel() * 2
        if plan[-1] and size + nbytes > SHARD_BYTES:
            plan.append([])
            size = 0
        plan[-1].append(key)
        size += nbytes
    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator(device=device).manual_seed(0)
    # Gemma's norms add 1 to their weight, the others multiply by it: both start as the identity.
    norm_value = 0.0 if config.model_type.startswith("gemma") else 1.0
    weight_map = {}
    for index, keys in enumerate(plan, start=1):
        file = f"model-{index:05d}-of-{len(plan):05d}.safetensors"
        shard = {}
        for key in keys:
            shape = shapes[key]
            if len(shape) >= 2:
                tensor = torch.randn(shape, generator=generator, device=device, dtype=torch.bfloat16) * 0.02
            else:
                tensor = torch.full(shape, norm_value, dtype=torch.bfloat16)
            shard[key] = tensor.cpu()
            weight_map[key] = file
        save_file(shard, str(folder / file), metadata={"format": "pt"})
    index_file = {"metadata": {}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index_file, indent=1))


def _minimal_tokenizer():
    """A tokenizer that only knows pad/bos/eos: benchmark rows are token ids already."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
