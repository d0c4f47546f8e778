"""GPU memory kept after the forward pass, its peak, and the time of one forward+backward of the decoder
layers (no LM head), eager and compiled (train.compile_layers), LoRA r16, checkpointed, rows of 2048 tokens.
    python3 results/compile_memory/measure.py [shape] [load_in] [batch] [variants]
    python3 results/compile_memory/measure.py llama-3.1-8b 4bit 2 eager,compiled,compiled-unfused
The rows "compiled around the checkpoint" of results/compile-h100.md were measured with the earlier
train.compile_layers, which compiled the checkpoint along with the layer.
"""
import sys
import time

import torch

from studio.bench.shapes import random_checkpoint
from studio.recipes import from_dict
from studio.train.training import load_for_training

shape = sys.argv[1] if len(sys.argv) > 1 else "llama-3.2-1b"
load_in = sys.argv[2] if len(sys.argv) > 2 else "16bit"
batch = int(sys.argv[3]) if len(sys.argv) > 3 else 4
folder = random_checkpoint(shape)
GiB = 1024 ** 3


def measure(variant):
    cfg = from_dict({"model": {"name_or_path": str(folder), "load_in": load_in}, "lora": {"dropout": 0.0, "r": 16, "alpha": 16},
                     "train": {"compile_layers": variant.startswith("compiled"),
                               "fused_lora": not variant.endswith("-unfused")}})
    model, _ = load_for_training(cfg)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model.train()
    body = model.get_base_model().model
    ids = torch.randint(4, 1000, (batch, 2048), generator=torch.Generator().manual_seed(0)).cuda()
    times = []
    for step in range(5):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start_mem = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            hidden = body(input_ids=ids, use_cache=False).last_hidden_state
        loss = hidden.float().pow(2).mean()
        torch.cuda.synchronize()
        after_forward = torch.cuda.memory_allocated() - start_mem
        loss.backward()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() - start_mem
        model.zero_grad(set_to_none=True)
        del hidden, loss
    print(f"{shape} {load_in} b{batch} {variant:9s} kept after forward {after_forward / GiB:6.2f} GiB, peak over start "
          f"{peak / GiB:6.2f} GiB, weights+start {start_mem / GiB:5.2f} GiB, fwd+bwd {min(times[2:]) * 1000:6.1f} ms",
          flush=True)
    del model, body
    torch.cuda.empty_cache()


print("torch", torch.__version__)
for variant in sys.argv[4].split(",") if len(sys.argv) > 4 else ("eager", "compiled"):
    measure(variant)
