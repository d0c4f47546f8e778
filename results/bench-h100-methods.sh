# Training methods on one H100 (device calls of 2026-11-27): peak memory and speed of each
# method on the studio's path, random weights of the real shapes, random tokens.
#   Llama 3.1 8B QLoRA at 2048 tokens: sft with 2 rows a step, dpo/orpo with one pair
#   (2 x 2048 tokens), kto with 2 rows.
#   Llama 3.2 1B full fine-tuning at 2048 tokens, batch 1: AdamW (16-bit states), 8-bit AdamW,
#   and GaLore (rank 128, every attention and MLP matrix) in its four variants.
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
R=${OUT:-bench}/methods; mkdir -p $R
B="python3 launch.py bench llama-3.1-8b --method qlora --length 2048 --warmup 2 --steps 4 --no-reference"
$B --train-method sft --batch 2 --out $R/8b-sft.json
$B --train-method dpo --batch 1 --out $R/8b-dpo.json
$B --train-method orpo --batch 1 --out $R/8b-orpo.json
$B --train-method kto --batch 2 --out $R/8b-kto.json
B1="python3 launch.py bench llama-3.2-1b --method full --batch 1 --length 2048 --warmup 2 --steps 4 --no-reference"
$B1 train.optimizer=adamw_torch --out $R/1b-adamw.json
$B1 train.optimizer=adamw_8bit --out $R/1b-adamw8.json
$B1 train.method=galore --out $R/1b-galore.json
$B1 train.method=galore galore.optimizer=adamw_8bit --out $R/1b-galore8.json
$B1 train.method=galore galore.layerwise=true --out $R/1b-galorelw.json
$B1 train.method=galore galore.optimizer=adamw_8bit galore.layerwise=true --out $R/1b-galore8lw.json
