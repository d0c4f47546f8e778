# Rows/s of `launch.py eval` on a GPU: batched generation against one row at a time
# (results/eval_rows_per_s.py), on the shapes of Gemma 3 270M and Qwen2.5 1.5B with random
# weights and a LoRA adapter trained for a few steps. Random weights rarely say EOS, so every
# answer runs to max_new_tokens: the figures are generation throughput with no early stops.
# Measured 2026-11-27 on an NVIDIA H200: results/eval-rows-per-s-gpu/*.json (about 2 and 2.5 minutes a shape).
set -u
export STUDIO_HOME=/tmp/sh PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
cd "$(dirname "$0")/.."   # the repository root
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
for shape in gemma-3-270m qwen2.5-1.5b; do
  F=$(python3 - "$shape" <<'PY' 2>/dev/null | tail -1
import sys
sys.path.insert(0, "tests")
from studio.bench.shapes import random_checkpoint
from tiny import build_tokenizer
folder = random_checkpoint(sys.argv[1])
build_tokenizer("qwen2").save_pretrained(folder)
print(folder)
PY
)
  timeout 180 python3 launch.py train recipes/quickstart.yaml model.name_or_path=$F name=$shape --runs-dir /tmp/runs \
    train.max_steps=3 train.save_steps=100 train.eval_steps=100 > "$OUT/train-$shape.log" 2>&1 || tail -5 "$OUT/train-$shape.log"
  run=$(ls -d /tmp/runs/*_$shape | tail -1)
  timeout 290 python3 results/eval_rows_per_s.py "$run" --batch 16 --limit 16 --max-new-tokens 64 --repeats 2 \
    --out "$OUT/eval-rows-per-s-gpu-$shape.json"
done
