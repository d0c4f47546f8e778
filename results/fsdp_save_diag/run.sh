# A tiny sharded (FSDP2) run on two GPUs with the save traced; prints the trace and the saved adapter's keys.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=results/fsdp_save_diag:${PYTHONPATH:-}
timeout 200 python3 - <<'PY' 2>&1 | grep -v "^\s*$" | cut -c1-700 | tail -30
import sys, tempfile
sys.path.insert(0, "tests")
from pathlib import Path
from safetensors.torch import load_file
from tiny import build_model
from conftest import tiny_config, train_tiny
d = Path(tempfile.mkdtemp())
m = build_model("llama", d / "llama")
r = train_tiny(tiny_config(m, "train.batch_size=2", "train.grad_accum=2", "train.max_steps=3", "train.save_steps=2",
                           "train.devices=0,1", "train.parallel=fsdp"), d / "runs")
print(r.state)
for f in sorted(r.run_dir.rglob("adapter_model.safetensors")):
    print(f.relative_to(r.run_dir), len(load_file(f)))
print("\n".join(l for l in (r.run_dir / "ranks" / "launcher.log").read_text().splitlines() if "save-diag" in l or "Error" in l))
PY
