# One GPU call: the preference methods (dpo, orpo, kto) on their recipes with the defaults, which now
# compile the decoder layers on CUDA (train.compile_layers=auto); the Qwen2.5 1.5B shape with random
# weights, 4 steps each. Prints whether the layers compiled, whether any fell back, and how each run ended.
set -u
[ -d /tmp/site ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site STUDIO_HOME=/tmp/sh PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
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
for m in dpo orpo kto; do
  rec=recipes/$m-qlora-llama-3.1-8b.yaml; [ $m = kto ] && rec=recipes/kto-qwen2.5-1.5b.yaml
  timeout 150 python3 launch.py train $rec model.name_or_path=$F name=$m --runs-dir /tmp/runs train.max_steps=4 \
    train.save_steps=100 train.learning_rate=5e-4 train.warmup_steps=0 train.max_length=512 train.grad_accum=1 > "$OUT/$m.log" 2>&1
  echo "$m: $(grep -c "WON'T CONVERT\|Backend compiler\|recompile_limit" "$OUT/$m.log") fallbacks;" \
    "$(grep -o "Compiled decoder layers: [0-9]*" "$OUT/$m.log" | head -1);" "$(grep "^\[end\]" "$OUT/$m.log" | cut -c1-160)"
  grep "step [0-9]/4" "$OUT/$m.log" | tail -2
done
