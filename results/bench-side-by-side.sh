# One GPU call, from a checkout carrying .whl/ (the GPU wheels) and .anchor/ (tools/unsloth-anchor/prepare.sh):
# `launch.py bench` on one shape with each variant of the studio's settings, then Unsloth on the same rows.
#   SHAPE=llama-3.2-1b METHOD=lora BATCH=4 VARIANTS="default compiled:train.compile_layers=true" bash results/bench-side-by-side.sh
# A variant is name:override,override (name alone: the defaults). Figures land in $OUT/<shape>-<name>.json.
set -u
[ -d /tmp/site ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site STUDIO_HOME=/tmp/sh PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SHAPE=${SHAPE:-llama-3.2-1b} METHOD=${METHOD:-lora} BATCH=${BATCH:-4} LIMIT=${LIMIT:-200}
for variant in ${VARIANTS:-default}; do
  name=${variant%%:*}; overrides=$([ "$name" = "$variant" ] || echo "${variant#*:}" | tr , ' ')
  timeout "$LIMIT" python3 launch.py bench "$SHAPE" --method "$METHOD" --batch "$BATCH" --length 2048 --warmup 4 --steps 8 \
    --no-reference $overrides --out "$OUT/$SHAPE-$name.json" 2>&1 | grep "| studio\|Error" | sed "s/^/$SHAPE $name /"
done
[ -d /tmp/us ] || { mkdir -p /tmp/us && tar -xJf .anchor/unsloth-site.tar.xz -C /tmp/us; }
PYTHONPATH=/tmp/us timeout "$LIMIT" python3 .anchor/unsloth_bench.py --folder "$STUDIO_HOME/cache/bench/$SHAPE" --method "$METHOD" \
  --batch "$BATCH" --length 2048 --warmup 3 --steps 8 --out "$OUT/$SHAPE-unsloth.json" > "$OUT/$SHAPE-unsloth.log" 2>&1
tail -1 "$OUT/$SHAPE-unsloth.log" | sed "s/^/$SHAPE unsloth /"
