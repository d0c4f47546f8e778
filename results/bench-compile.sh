# One GPU call, from a checkout carrying .whl/ (the GPU wheels) and .anchor/ (tools/unsloth-anchor/prepare.sh):
# the Llama 3.2 1B shape, bf16 LoRA, 4 x 2048, through `launch.py bench` with the decoder layers eager and
# compiled (train.compile_layers=true), Unsloth on the same rows, then where the compiled step's GPU time goes.
# The CUDA tests of the compiled and fused layers run first.
#   bash results/bench-compile.sh                                          # eager/compiled/unsloth json in $OUT
#   SHAPE=llama-3.1-8b METHOD=qlora BATCH=2 TESTS=no PROFILE=no T_EAGER=200 T_COMPILED=200 bash results/bench-compile.sh
# (the 8B shape, QLoRA; TESTS=no and PROFILE=no skip the CUDA tests and the profile)
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site || exit 1
export STUDIO_HOME=/tmp/sh PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SHAPE=${SHAPE:-llama-3.2-1b} METHOD=${METHOD:-lora} BATCH=${BATCH:-4}
[ "${TESTS:-yes}" = no ] || timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_speed_compiled.py tests/test_speed_fused.py tests/test_speed.py \
  -k "cuda or one_launch" \
  2>&1 | tail -3
B="python3 launch.py bench $SHAPE --method $METHOD --batch $BATCH --length 2048 --warmup 4 --steps 8 --no-reference"
timeout ${T_EAGER:-150} $B train.compile_layers=false --out "$OUT/eager.json" 2>&1 | grep "| studio" | sed 's/^/eager    /'
timeout ${T_COMPILED:-300} $B train.compile_layers=true --out "$OUT/compiled.json" 2>&1 | grep "| studio\|Error" | sed 's/^/compiled /'
mkdir -p /tmp/us && tar -xJf .anchor/unsloth-site.tar.xz -C /tmp/us
PYTHONPATH=/tmp/us timeout 200 python3 .anchor/unsloth_bench.py --folder "$STUDIO_HOME/cache/bench/$SHAPE" --method "$METHOD" \
  --batch "$BATCH" --length 2048 --warmup 3 --steps 8 --out "$OUT/unsloth.json" > "$OUT/unsloth.log" 2>&1
tail -1 "$OUT/unsloth.log" | sed 's/^/unsloth  /'
[ "${PROFILE:-yes}" = no ] || timeout 200 $B --profile --steps 3 train.compile_layers=true --out "$OUT/compiled-profile.json" 2>&1 | grep "GPU time\|Host"
