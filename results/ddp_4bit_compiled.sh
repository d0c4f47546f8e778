# Compiled decoder layers with 4-bit weights, one GPU and two (DDP), on the tiny test model; recompiles logged.
set -u
export PYTHONUNBUFFERED=1 TORCH_LOGS=recompiles,graph_breaks
for devices in ${DEVICES:-0 0,1}; do
  echo "== train.devices=$devices"
  timeout 200 python3 - "$devices" <<'PY' 2>&1 | grep -v "^\s*$" | cut -c1-600 | tail -40
import sys, tempfile
sys.path.insert(0, "tests")
from pathlib import Path
from tiny import build_model
from conftest import tiny_config, train_tiny
from studio.events import read_events
d = Path(tempfile.mkdtemp())
m = build_model("llama", d / "llama")
r = train_tiny(tiny_config(m, "train.batch_size=2", "train.grad_accum=2", "train.max_steps=4", "model.load_in=4bit",
                           "train.gradient_checkpointing=true", "train.compile_layers=true", f"train.devices={sys.argv[1]}"),
               d / "runs")
print(r.state, [e.message[:400] for e in read_events(r.run_dir / "events.jsonl") if e.kind in ("end", "warning")])
log = r.run_dir / "ranks" / "launcher.log"
if log.is_file():
    import re
    lines = [l for l in log.read_text().splitlines()
             if "Recompiling" in l or re.search(r"\]\s+- \d+/\d+: ", l) or "Error" in l]
    print("\n".join(lines[:30]))
PY
done
