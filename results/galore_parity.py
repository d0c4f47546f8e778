"""Loss parity, GaLore against AdamW: full fine-tuning of the tiny test Llama on the sample data.

    .venv/bin/python results/galore_parity.py     (from the repository root; a few minutes on a CPU)
"""
import json, sys, time
sys.path.insert(0, "tests")
from pathlib import Path
from conftest import tiny_config, train_tiny
p = Path("/tmp/tiny_llama")
if not p.exists():
    from tiny import build_model
    build_model("llama", p)
out = {}
for name, extra in [("adamw", ["train.optimizer=adamw_torch"]), ("galore", ["train.method=galore", "galore.rank=64", "galore.update_interval=20"]),
                    ("galore-scale1", ["train.method=galore", "galore.rank=64", "galore.update_interval=20", "galore.scale=1.0"])]:
    cfg = tiny_config(p, "lora.enabled=false", "train.max_steps=40", "train.learning_rate=1e-3",
                      "data.max_samples=0", "data.eval_fraction=0.1", "train.eval_steps=20", "train.save_steps=40", *extra)
    t = time.time(); r = train_tiny(cfg, Path("/tmp/galore-parity"))
    ev = [json.loads(l) for l in (r.run_dir / "events.jsonl").read_text().splitlines()]
    out[name] = {"losses": [e["loss"] for e in ev if e["kind"] == "log"], "eval": [e["eval_loss"] for e in ev if e["kind"] == "eval"], "s": time.time() - t}
    print(name, out[name]["losses"][0], out[name]["losses"][-1], out[name]["eval"], flush=True)
json.dump(out, open("results/galore-parity-cpu.json", "w"))
