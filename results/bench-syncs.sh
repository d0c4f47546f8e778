#!/usr/bin/env bash
# One GPU call, from a checkout carrying .whl/ (results/gpu-wheels.sh) and .anchor/ (tools/unsloth-anchor/prepare.sh):
# what the waits for the GPU inside a step cost. The 1B shape, bf16 LoRA, 4 x 2048, `launch.py bench` with the
# studio's defaults, against the same with
#   trl-metrics:   TRL's own SFT trainer (entropy, accuracy and token count read back after every batch)
#   all-positions: the fused LM head scoring every position (no boolean index, so none of its host reads;
#                  every position of these rows is labelled, so the head does the same work)
#   gc-off:        Python's garbage collector off for the run (what its pauses cost at most)
#   head-8k:       the fused LM head's vocabulary tiles 8,192 wide instead of TRL's 32,768 (its product buffer,
#                  4,096 tokens by a tile, is 64 MiB instead of 256 MiB)
# and Unsloth on the same rows (AGAIN=yes: the defaults once more at the end, for drift). Every studio run records
# its garbage collector's pauses (results/gc_pauses/) in $OUT/gc-NAME/.
#   bash results/bench-syncs.sh                  # json per run in $OUT
#   SHAPE=llama-3.1-8b METHOD=qlora BATCH=2 bash results/bench-syncs.sh
set -u
[ -d /tmp/site ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site STUDIO_HOME=/tmp/sh PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SHAPE=${SHAPE:-llama-3.2-1b} METHOD=${METHOD:-lora} BATCH=${BATCH:-4} STEPS=${STEPS:-12}
ROOT=$(pwd)
variant() {  # a copy of the checkout with one change: name, file, sed expression
  rm -rf "/tmp/$1"; cp -r "$ROOT" "/tmp/$1" && sed -i "$3" "/tmp/$1/$2"
}
variant trl-metrics studio/train/methods/sft_metrics.py "s/if trl.__version__ != TRL_CHECKED:/if True:/"
variant all-positions studio/train/methods/sft_metrics.py \
  "s/^    from trl import SFTTrainer$/    from trl import SFTTrainer\n    import trl.trainer.utils as fused_head; fused_head._use_triton = lambda device: False/"
variant head-8k studio/train/methods/sft_metrics.py \
  "s/^    from trl import SFTTrainer$/    from trl import SFTTrainer\n    import trl.trainer.utils as fused_head; fused_head._CHUNKED_LOGPROB_CHUNK_SIZE = 8192/"
variant gc-off studio/train/methods/sft_metrics.py \
  "s/^    from trl import SFTTrainer$/    from trl import SFTTrainer\n    import gc; gc.disable()/"
bench() {  # name, checkout
  (cd "$2" && PYTHONPATH=$ROOT/results/gc_pauses:$PYTHONPATH STUDIO_GC_OUT=$OUT/gc-$1 timeout "${LIMIT:-240}" python3 launch.py bench "$SHAPE" --method "$METHOD" --batch "$BATCH" --length 2048 \
     --warmup 4 --steps "$STEPS" --no-reference --out "$OUT/$1.json" > "$OUT/$1.log" 2>&1)
  grep "| studio" "$OUT/$1.log" | sed "s/^/$1 /" || tail -5 "$OUT/$1.log"
}
bench defaults "$ROOT"
mkdir -p /tmp/us && tar -xJf .anchor/unsloth-site.tar.xz -C /tmp/us
PYTHONPATH=/tmp/us timeout 240 python3 .anchor/unsloth_bench.py --folder "$STUDIO_HOME/cache/bench/$SHAPE" --method "$METHOD" \
  --batch "$BATCH" --length 2048 --warmup 3 --steps "$STEPS" --out "$OUT/unsloth.json" > "$OUT/unsloth.log" 2>&1
tail -1 "$OUT/unsloth.log" | sed 's/^/unsloth /'
for name in gc-off trl-metrics head-8k all-positions; do bench $name /tmp/$name; done
[ "${AGAIN:-no}" = no ] || bench defaults-again "$ROOT"
# The GPU machine returns a limited number of files: everything in one archive as well.
(cd "$OUT" && tar czf /tmp/bench-syncs.tgz --exclude=bench-syncs.tgz . && mv /tmp/bench-syncs.tgz .)
