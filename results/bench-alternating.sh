#!/usr/bin/env bash
# One GPU call, from a checkout carrying .whl/ (results/gpu-wheels.sh) and .anchor/ (tools/unsloth-anchor/prepare.sh):
# the studio's defaults and Unsloth on the same rows, alternated ROUNDS times (studio, Unsloth, studio, ...), so
# that a drift of the machine within the call shows as a difference between rounds rather than between tools.
#   SHAPE=llama-3.1-8b METHOD=qlora BATCH=2 ROUNDS=2 bash results/bench-alternating.sh    # json per run in $OUT
set -u
[ -d /tmp/site ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site STUDIO_HOME=/tmp/sh PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SHAPE=${SHAPE:-llama-3.2-1b} METHOD=${METHOD:-lora} BATCH=${BATCH:-4} LIMIT=${LIMIT:-200}
[ -d /tmp/us ] || { mkdir -p /tmp/us && tar -xJf .anchor/unsloth-site.tar.xz -C /tmp/us; }
for round in $(seq "${ROUNDS:-2}"); do
  timeout "$LIMIT" python3 launch.py bench "$SHAPE" --method "$METHOD" --batch "$BATCH" --length 2048 --warmup 4 --steps 8 \
    --no-reference --out "$OUT/$SHAPE-studio-$round.json" 2>&1 | grep "| studio\|Error" | sed "s/^/$SHAPE round $round /"
  PYTHONPATH=/tmp/us timeout "$LIMIT" python3 .anchor/unsloth_bench.py --folder "$STUDIO_HOME/cache/bench/$SHAPE" \
    --method "$METHOD" --batch "$BATCH" --length 2048 --warmup 3 --steps 8 --out "$OUT/$SHAPE-unsloth-$round.json" \
    > "$OUT/$SHAPE-unsloth-$round.log" 2>&1
  tail -1 "$OUT/$SHAPE-unsloth-$round.log" | sed "s/^/$SHAPE round $round unsloth /" | cut -c1-200
done
