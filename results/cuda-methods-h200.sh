# Every training method's CUDA path, end to end, on one GPU: see results/methods-h100.md.
set -u
# (the pinned packages installed; on the device they came from prepared wheels)
export STUDIO_HOME=/tmp/sh PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
R=$OUT/r3; mkdir -p $R
cd "$(dirname "$0")/.."   # the repository root
F=$(python3 - <<'PY' 2>/dev/null | tail -1
import sys
sys.path.insert(0, "tests")
from studio.bench.shapes import random_checkpoint
from tiny import build_tokenizer
folder = random_checkpoint("qwen2.5-1.5b")
build_tokenizer("qwen2").save_pretrained(folder)
print(folder)
PY
)
echo "model: $F"
summ() { python3 - "$1" <<'PY'
import json, sys, glob
d = sorted(glob.glob("/tmp/runs/*" + sys.argv[1]))[-1]
ev = [json.loads(l) for l in open(d + "/events.jsonl")]
logs = [e for e in ev if e["kind"] == "log"]
ends = [e for e in ev if e["kind"] == "end"]
per = (logs[-1]["elapsed_s"] - logs[0]["elapsed_s"]) / max(1, logs[-1]["step"] - logs[0]["step"]) if len(logs) > 1 else None
peak = max((e.get("memory") or {}).get("gpu_peak") or 0 for e in logs) if logs else None
print(sys.argv[1], "steps", len(logs), "s/step", per, "gpu_peak", peak, "end", ends[-1]["message"][:200] if ends else None)
for e in logs[-2:]:
    print("  metrics", {k: round(v, 4) for k, v in (e.get("extra", {}).get("metrics") or {}).items()})
PY
}
timeout 240 python3 launch.py train recipes/grpo-qwen2.5-0.5b-instruct.yaml model.name_or_path=$F name=g --runs-dir /tmp/runs train.max_steps=5 train.save_steps=100 train.warmup_steps=0 > $R/grpo.log 2>&1; tail -3 $R/grpo.log; summ _g
for m in dpo orpo kto; do
  rec=recipes/$m-qlora-llama-3.1-8b.yaml; [ $m = kto ] && rec=recipes/kto-qwen2.5-1.5b.yaml
  timeout 120 python3 launch.py train $rec model.name_or_path=$F name=$m --runs-dir /tmp/runs train.max_steps=4 train.save_steps=100 train.learning_rate=5e-4 train.warmup_steps=0 train.max_length=512 train.grad_accum=1 > $R/$m.log 2>&1; tail -1 $R/$m.log; summ _$m
done
