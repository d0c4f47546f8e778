# One GPU call (run from a checkout holding .whl/ wheels and .anchor/ from tools/unsloth-anchor/prepare.sh, in
# .speedlab/): CUDA tests of the fused path, then Llama 3.2 1B bf16 LoRA 4x2048 with train.fused_lora off and on
# (with the textbook path for loss parity), and Unsloth on the same rows.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
export STUDIO_HOME=/tmp/sh PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
R=/tmp/res; mkdir -p $R /tmp/us
save() { tar czf $OUT/res.tgz -C $R . ; }
cd .speedlab
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_speed_fused.py -k "cuda or one_launch" 2>&1 | tail -3 | tee $R/pytest.log; save
B="python3 launch.py bench llama-3.2-1b --method lora --batch 4 --length 2048 --warmup 3 --steps 8"
timeout 120 $B --no-reference train.fused_lora=false --out $R/1b-off.json 2>&1 | grep "| studio" | tee $R/1b-off.log; save
timeout 150 $B train.fused_lora=true --out $R/1b-on.json 2>&1 | grep "| studio\|| reference\|Largest" | tee $R/1b-on.log; save
tar -xJf ../.anchor/unsloth-site.tar.xz -C /tmp/us
PYTHONPATH=/tmp/us timeout 150 python3 ../.anchor/unsloth_bench.py --folder $STUDIO_HOME/cache/bench/llama-3.2-1b --method lora --batch 4 --length 2048 --warmup 3 --steps 8 --out $R/us-1b.json > $R/us-1b.log 2>&1; tail -1 $R/us-1b.log; save
timeout 100 $B --no-reference --profile --steps 3 train.fused_lora=true --out $R/1b-on-prof.json 2>&1 | grep "GPU time" ; save
