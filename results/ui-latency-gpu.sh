# One GPU call: the Train tab polled by a gradio client while the 1B shape trains (bf16 LoRA, 4 x 2048,
# compiled layers as by default), against the same run headless. Carry .whl (the GPU wheels) and .uiwhl
# (gradio and what it needs beyond the GPU image's packages; how they were fetched: results/ui-latency-gpu.md).
#   bash results/ui-latency-gpu.sh        # $OUT/ui_latency-<GPU>-client.json
set -u
wheels=$(ls .whl/*.whl; for w in .uiwhl/*.whl; do [ -e ".whl/${w#.uiwhl/}" ] || echo "$w"; done)  # each once
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $wheels || exit 1
export PYTHONPATH=/tmp/site STUDIO_HOME=/tmp/sh PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
F=$(python3 - <<'PY' 2>/dev/null | tail -1
import sys
sys.path.insert(0, "tests")
from studio.bench.shapes import random_checkpoint
from tiny import build_tokenizer
folder = random_checkpoint("llama-3.2-1b")
build_tokenizer("llama").save_pretrained(folder)
print(folder)
PY
)
python3 - <<'PY'
import json, random
rng = random.Random(0)
words = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega river stone cloud lamp".split()
with open("/tmp/long.jsonl", "w") as f:
    for i in range(600):
        f.write(json.dumps({"instruction": f"Write passage {i}.", "input": "",
                            "output": " ".join(rng.choice(words) for _ in range(2500))}) + "\n")
PY
timeout "${LIMIT:-400}" python3 scripts/ui_latency.py --client "$F" "${STEPS:-30}" data.path=/tmp/long.jsonl data.template=alpaca \
  data.eval_fraction=0 train.max_length=2048 train.batch_size=4 train.grad_accum=1 train.warmup_steps=0
