# One GPU call (as bench-h100-fused-1b.sh says), right after it:
# Llama 3.1 8B QLoRA 2x2048 with train.fused_lora off and on
# (with the textbook path for loss parity), and Unsloth on the same rows.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
export STUDIO_HOME=/tmp/sh PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
R=/tmp/res; mkdir -p $R /tmp/us
save() { tar czf $OUT/res.tgz -C $R . ; }
cd .speedlab
B="python3 launch.py bench llama-3.1-8b --method qlora --batch 2 --length 2048 --warmup 3 --steps 8"
timeout 200 $B --no-reference train.fused_lora=false --out $R/8b-off.json 2>&1 | grep "| studio" | tee $R/8b-off.log; save
timeout 170 $B train.fused_lora=true --out $R/8b-on.json 2>&1 | grep "| studio\|| reference\|Largest" | tee $R/8b-on.log; save
tar -xJf ../.anchor/unsloth-site.tar.xz -C /tmp/us
PYTHONPATH=/tmp/us timeout 150 python3 ../.anchor/unsloth_bench.py --folder $STUDIO_HOME/cache/bench/llama-3.1-8b --method qlora --batch 2 --length 2048 --warmup 3 --steps 8 --out $R/us-8b.json > $R/us-8b.log 2>&1; tail -1 $R/us-8b.log; save
timeout 100 $B --no-reference --profile --steps 3 train.fused_lora=true --out $R/8b-on-prof.json 2>&1 | grep "GPU time" ; save
