"""Sharded (FSDP2) 4-bit training against data parallel (DDP) and one process: where their adapters part.

    python3 results/fsdp_4bit_diag/compare.py     # a machine with two GPUs

The tiny test Llama, the same 4 rows a step everywhere, plain SGD (so the adapter moves by the
gradients themselves), 16-bit and 4-bit weights. For each pair: the logged grad norms and the
largest relative difference of lora_A and of lora_B tensors.
"""

import os
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, "tests")
from conftest import tiny_config, train_tiny  # noqa: E402
from tiny import build_model  # noqa: E402

from safetensors.torch import load_file  # noqa: E402

from studio.events import read_events  # noqa: E402

STEPS = sys.argv[1] if len(sys.argv) > 1 else "2"
root = Path(tempfile.mkdtemp())
model = build_model("llama", root / "llama")
common = ("train.batch_size=2", "train.grad_accum=2", f"train.max_steps={STEPS}", "train.save_steps=100", "train.gradient_checkpointing=true",
          "train.compile_layers=false", "train.optimizer=sgd", "train.learning_rate=0.05")
ONE, TWO = os.environ.get("ONE", "0"), os.environ.get("TWO", "0,1")  # ONE=cpu TWO=cpu:2 KINDS=16bit: a try on a CPU
runs = {
    "one": (f"train.devices={ONE}",),  # the studio shares the batches a step accumulates among the processes
    "ddp": (f"train.devices={TWO}", "train.parallel=ddp"),
    "fsdp": (f"train.devices={TWO}", "train.parallel=fsdp"),
}
if ONE == "cpu":
    del runs["fsdp"]
KINDS = os.environ.get("KINDS", "16bit 4bit").split()
extra = sys.argv[2:]  # more overrides for every run, e.g. train.max_grad_norm=0
adapters = {}
for load_in in KINDS:
    for name, overrides in runs.items():
        result = train_tiny(tiny_config(model, f"model.load_in={load_in}", *common, *overrides, *extra),
                            root / f"{load_in}-{name}", stop=threading.Event())
        logs = [e for e in read_events(result.run_dir / "events.jsonl") if e.kind == "log"]
        print(load_in, name, result.state, "losses", [round(e.loss, 5) for e in logs],
              "grad norms", [round(e.grad_norm or 0, 5) for e in logs], flush=True)
        adapters[load_in, name] = load_file(result.run_dir / "adapter" / "adapter_model.safetensors")


def differences(a: dict, b: dict) -> str:
    out = []
    for part in ("lora_A", "lora_B"):
        errors = {k: ((a[k].float() - b[k].float()).norm() / b[k].float().norm()).item() for k in b if part in k}
        worst = max(errors, key=errors.get)
        out.append(f"{part}: max {errors[worst]:.4f} ({worst.split('model.layers.')[-1]}), "
                   f"median {sorted(errors.values())[len(errors) // 2]:.4f}")
    return "; ".join(out)


for load_in in KINDS:
    for a, b in [(a, b) for a, b in (("ddp", "one"), ("fsdp", "ddp"), ("fsdp", "one")) if a in runs and b in runs]:
        print(f"{load_in} {a} vs {b}: {differences(adapters[load_in, a], adapters[load_in, b])}")
for name in runs if len(KINDS) == 2 else []:
    print(f"4bit vs 16bit, {name}: {differences(adapters['4bit', name], adapters['16bit', name])}")
