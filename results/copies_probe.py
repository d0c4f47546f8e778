"""Which operations launch the GPU-to-GPU copies of a studio training step (GPU machine).

    python3 results/copies_probe.py llama-3.2-1b lora 4 [kernel-name-fragment]

Runs `launch.py bench`'s studio path with its profiled steps recording shapes and Python stacks, and
lists, for every kernel whose name holds the fragment (default: "Memcpy DtoD"), the chain of operations
that launched it and the first frame outside torch, by GPU time per step.
"""
import collections
import functools
import sys

import torch

import studio.bench.paths as paths
from studio.bench import model_folder
from studio.bench.paths import BenchSpec, run_studio, token_rows

model_name, method, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
fragment = sys.argv[4] if len(sys.argv) > 4 else "Memcpy DtoD"
spec = BenchSpec(model_name, method, batch, 2048, steps=2, warmup=4, profile=True, profile_steps=2)

torch.profiler.profile = functools.partial(torch.profiler.profile, record_shapes=True, with_stack=True)
summarize = paths.kernel_time_by_kind


def launched_by(profiler, steps: int) -> dict:
    where: dict[tuple, list] = collections.defaultdict(lambda: [0, 0.0])
    for event in profiler.events():
        kernels = [k for k in getattr(event, "kernels", []) if fragment in k.name]
        if not kernels:
            continue
        chain, parent = [], event
        while parent is not None and len(chain) < 6:
            shapes = parent.input_shapes if parent.name.startswith("aten::") else ""
            chain.append(f"{parent.name}{shapes if shapes else ''}"[:110])
            parent = parent.cpu_parent
        frames = [f for p in _ancestors(event) for f in (p.stack or []) if "/torch/" not in f][:3]
        key = (" <- ".join(chain), " | ".join(frames))
        where[key][0] += len(kernels)
        where[key][1] += sum(k.duration for k in kernels) / 1000
    for (chain, frames), (count, ms) in sorted(where.items(), key=lambda kv: -kv[1][1])[:20]:
        print(f"{ms / steps:7.2f} ms/step {count / steps:6.1f} launches/step  {chain}\n{'':35}{frames}")
    return summarize(profiler, steps)


def _ancestors(event):
    while event is not None:
        yield event
        event = event.cpu_parent


paths.kernel_time_by_kind = launched_by
folder = model_folder(model_name)
from transformers import AutoConfig  # noqa: E402

vocab = AutoConfig.from_pretrained(folder).get_text_config().vocab_size
result = run_studio(spec, folder, token_rows(spec, vocab))
print("profile", {k: round(v, 1) for k, v in (result.profile or {}).get("by_kind_ms_per_step", {}).items()})
