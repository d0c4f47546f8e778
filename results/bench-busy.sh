# One GPU call, from a checkout carrying .whl/ (the GPU wheels) and .anchor/ (tools/unsloth-anchor/prepare.sh):
# how busy the GPU is in a studio training step, two ways, then Unsloth's speed on the same rows.
#   SHAPE=llama-3.2-1b METHOD=lora BATCH=4 bash results/bench-busy.sh
# `launch.py bench --profile` times 16 steps unprofiled (NVML samples the GPU's busy share meanwhile), then
# profiles 3 more and divides their kernels' busy time by the unprofiled step; Unsloth profiles UNSLOTH_PROFILE (3)
# steps after its measured ones, so both paths' GPU time per kind of kernel can be set side by side. Figures land in $OUT.
set -u
[ -d /tmp/site ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site STUDIO_HOME=/tmp/sh PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SHAPE=${SHAPE:-llama-3.2-1b} METHOD=${METHOD:-lora} BATCH=${BATCH:-4} LIMIT=${LIMIT:-240} STEPS=${STEPS:-16}
[ -z "${TESTS:-}" ] || timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_speed.py -k "busy or profiled" 2>&1 | tail -3
timeout "$LIMIT" python3 launch.py bench "$SHAPE" --method "$METHOD" --batch "$BATCH" --length 2048 --warmup 4 \
  --steps "$STEPS" --profile --no-reference --out "$OUT/$SHAPE-busy.json" > "$OUT/$SHAPE-busy.log" 2>&1
grep "| studio\|busy\|Error" "$OUT/$SHAPE-busy.log" | cut -c1-400
[ -d /tmp/us ] || { mkdir -p /tmp/us && tar -xJf .anchor/unsloth-site.tar.xz -C /tmp/us; }
PYTHONPATH=/tmp/us timeout "$LIMIT" python3 .anchor/unsloth_bench.py --folder "$STUDIO_HOME/cache/bench/$SHAPE" --method "$METHOD" \
  --batch "$BATCH" --length 2048 --warmup 3 --steps "$STEPS" --profile-steps "${UNSLOTH_PROFILE:-3}" --out "$OUT/$SHAPE-unsloth.json" > "$OUT/$SHAPE-unsloth.log" 2>&1
tail -1 "$OUT/$SHAPE-unsloth.log" | sed "s/^/$SHAPE unsloth /"
