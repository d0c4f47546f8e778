"""Experiment (GPU machine): the studio path with each decoder layer compiled (torch.compile), tokens/s."""
import sys
import time

import torch
import torch._dynamo.utils as dynamo_utils

from studio.bench import model_folder
from studio.bench.paths import BenchSpec, studio_config, token_rows, train_studio
from studio.train import load_for_training

torch._dynamo.config.cache_size_limit = 128
torch._dynamo.config.accumulated_cache_size_limit = 1024
model_name, method, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
spec = BenchSpec(model_name, method, batch, 2048, steps=6, warmup=4, overrides=("train.fused_lora=true", *sys.argv[4:]))
cfg = studio_config(spec, model_folder(model_name))
model, tokenizer = load_for_training(cfg)
for layer in model.base_model.model.model.layers:
    layer.compile()
started = time.perf_counter()
result = train_studio(cfg, model, tokenizer, token_rows(spec, model.config.get_text_config().vocab_size), spec.warmup)
print(f"compiled {model_name} {method} b{batch}: error={result.error} steps {[round(s, 3) for s in result.step_seconds]} "
      f"median {result.median_step_s:.4f} s, {batch * 2048 / result.median_step_s:,.0f} tokens/s, "
      f"peak {result.peak_allocated_gib:.2f} GiB, losses {[round(l, 4) for l in result.losses]}, "
      f"wall {time.perf_counter() - started:.0f} s")
print("dynamo", dict(dynamo_utils.counters["stats"]), "frames", dict(dynamo_utils.counters["frames"]))
print("graph breaks", dict(dynamo_utils.counters["graph_break"]))
