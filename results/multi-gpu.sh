# One GPU against two, from the same recipe: tokens/s, s/step, peak memory per GPU and the loss curve.
# The Llama 3.2 1B shape (random weights, a small test tokenizer), bf16 LoRA r16 on every projection,
# 4 rows of 2048 tokens per GPU. For each ACCUMS value A: one GPU accumulating A batches a step, and two
# GPUs sharing those A batches (A=2: one each, a step of 8 rows on both; A=1: one each, so the pair's step
# sees twice the rows, each GPU doing exactly the single GPU's work).
# Needs a machine with two GPUs; figures in results/multi-gpu-h200.md.
#   SHAPE=tiny-llama ONE=cpu TWO=cpu:2 FSDP=no LENGTH=128 bash results/multi-gpu.sh   # the same on a CPU
#   SMALL=no BIG=yes STEPS=8 LIMIT=240 bash results/multi-gpu.sh   # the 8B shape alone (a call of its own;
#                                      BIG_RUNS=capped for the sharded run only):
#                                      QLoRA on one GPU and two, bf16 LoRA under a 12 GiB cap per GPU
#   SMALL=no FSDP_RESUME=yes bash results/multi-gpu.sh   # a sharded run stopped, refused on one GPU, resumed on two
#   SMALL=no QLORA_FSDP=yes bash results/multi-gpu.sh    # 4-bit weights on two GPUs: DDP against sharded (FSDP2)
#   SMALL=no DEEPSPEED=yes bash results/multi-gpu.sh     # DDP, DeepSpeed ZeRO-2 and ZeRO-3 with the same 32-bit AdamW
#   PYTHONPATH=results/ddp_options:$PYTHONPATH STUDIO_DDP_OPTIONS="static_graph gradient_as_bucket_view" \
#     ACCUMS=2 FSDP=no bash results/multi-gpu.sh   # DDP options the studio does not set, to measure them
#   PYTHONPATH=results/profile_steps STUDIO_PROFILE_STEPS=8:4 STUDIO_PROFILE_OUT=$OUT ACCUMS=1 FSDP=no \
#     bash results/multi-gpu.sh        # where each process's step time goes (profile-rank-K.txt in $OUT)
set -u
export STUDIO_HOME=${STUDIO_HOME:-/tmp/sh} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
cd "$(dirname "$0")/.."   # the repository root
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SHAPE=${SHAPE:-llama-3.2-1b} ONE=${ONE:-0} TWO=${TWO:-0,1} FSDP=${FSDP:-yes} LENGTH=${LENGTH:-2048} STEPS=${STEPS:-14}
LOG_EVERY=${LOG_EVERY:-1}  # steps between logs (each log waits for the GPUs and gathers from every process)
# ROWS: rows of the made-up data set (600; fewer tokenize sooner, STEPS x 8 are enough)
RUNS=$(mktemp -d)
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader 2>/dev/null
checkpoint() {  # a shape's random weights with a small test tokenizer: prints its folder
  python3 - "$1" <<'PY' 2>/dev/null | tail -1
import sys
sys.path.insert(0, "tests")
from studio.bench.shapes import random_checkpoint
from tiny import build_tokenizer
folder = random_checkpoint(sys.argv[1])
build_tokenizer("llama").save_pretrained(folder)
print(folder)
PY
}
F=$(checkpoint "$SHAPE")
python3 - "${ROWS:-600}" <<'PY'
import json, random, sys
rng = random.Random(0)
words = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega river stone cloud lamp".split()
with open("/tmp/long.jsonl", "w") as f:
    for i in range(int(sys.argv[1])):
        text = " ".join(rng.choice(words) for _ in range(2500))
        f.write(json.dumps({"instruction": f"Write passage {i}.", "input": "", "output": text}) + "\n")
PY
common="model.name_or_path=$F data.path=/tmp/long.jsonl data.eval_fraction=0 data.template=alpaca
        train.max_length=$LENGTH train.batch_size=4 train.max_steps=$STEPS train.save_steps=1000
        train.warmup_steps=0 train.gradient_checkpointing=true train.logging_steps=$LOG_EVERY --runs-dir $RUNS"
train() {  # name, then overrides (EXTRA: overrides added to every run, e.g. EXTRA=train.optimizer=adamw_torch)
  local name=$1; shift
  timeout "${LIMIT:-170}" python3 launch.py train recipes/quickstart.yaml name=$name $common "$@" ${EXTRA:-} > "$OUT/$name.log" 2>&1 \
    || { echo "$name failed:"; tail -15 "$OUT/$name.log"; }
}
if [ "${SMALL:-yes}" = yes ]; then
  for accum in ${ACCUMS:-2}; do
    train one-a$accum train.grad_accum=$accum train.devices=$ONE
    train ddp-a$accum train.grad_accum=$accum train.devices=$TWO train.parallel=ddp
  done
  [ "$FSDP" = yes ] && train fsdp-a2 train.grad_accum=2 train.devices=$TWO train.parallel=fsdp
fi
if [ "${BIG:-no}" = yes ]; then  # the 8B shape: QLoRA 2 x 2048 on one GPU and two, and bf16
  # LoRA under a 12 GiB cap per GPU, which train.parallel=auto must shard (FSDP2) to fit
  F=$(checkpoint llama-3.1-8b)
  common="model.name_or_path=$F data.path=/tmp/long.jsonl data.eval_fraction=0 data.template=alpaca
          train.max_length=$LENGTH train.batch_size=2 train.grad_accum=${BIG_ACCUM:-2} train.max_steps=$STEPS train.save_steps=1000
          train.warmup_steps=0 train.gradient_checkpointing=true train.logging_steps=$LOG_EVERY --runs-dir $RUNS"
  for run in ${BIG_RUNS:-one ddp capped}; do  # BIG_RUNS=capped: the sharded run alone
    case $run in
      one) train one-8b model.load_in=4bit train.devices=$ONE ;;
      ddp) train ddp-8b model.load_in=4bit train.devices=$TWO train.parallel=ddp ;;
      capped) train capped-8b model.load_in=16bit train.gpu_memory_cap=12 train.devices=$TWO ;;
    esac
  done
fi
if [ "${QLORA_FSDP:-no}" = yes ]; then  # 4-bit weights on two GPUs: each holding them whole (DDP) against
  # sharded (FSDP2, the packed bytes stored as float16 so FSDP gathers them as bytes); the same 8 rows a step
  train ddp4-q train.grad_accum=2 model.load_in=4bit train.devices=$TWO train.parallel=ddp
  train fsdp4-q train.grad_accum=2 model.load_in=4bit train.devices=$TWO train.parallel=fsdp
fi
if [ "${DEEPSPEED:-no}" = yes ]; then  # DeepSpeed ZeRO-2 and ZeRO-3 against DDP and one GPU, all with the
  # 32-bit AdamW the split-state engines step (auto is 8-bit AdamW elsewhere); the same 8 rows a step
  for run in one-adamw ddp-adamw zero2-adamw zero3-adamw; do
    case $run in
      one-adamw) devices=$ONE parallel=auto ;;
      ddp-adamw) devices=$TWO parallel=ddp ;;
      zero2-adamw) devices=$TWO parallel=deepspeed-zero2 ;;
      zero3-adamw) devices=$TWO parallel=deepspeed-zero3 ;;
    esac
    train $run train.grad_accum=2 train.optimizer=adamw_torch train.devices=$devices train.parallel=$parallel
  done
fi
if [ "${FSDP_RESUME:-no}" = yes ]; then  # sharded (FSDP2) training stopped at step 4 by its max_steps, refused
  # on one GPU (a sharded checkpoint), resumed on two to step 8; the adapter then loads like any other
  train fsdp-resume train.grad_accum=2 train.devices=$TWO train.parallel=fsdp train.max_steps=4
  run=$(ls -d "$RUNS"/*_fsdp-resume)
  python3 launch.py resume "$run" train.max_steps=8 train.devices=$ONE --runs-dir "$RUNS" 2>&1 | tail -3
  timeout "${LIMIT:-170}" python3 launch.py resume "$run" train.max_steps=8 train.devices=$TWO --runs-dir "$RUNS" \
    > "$OUT/fsdp-resumed.log" 2>&1 || { echo "resume failed:"; tail -15 "$OUT/fsdp-resumed.log"; }
  python3 - "$run" <<'PY'
import sys
from pathlib import Path
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
from studio.runs import load_run_config
run = Path(sys.argv[1])
base = AutoModelForCausalLM.from_pretrained(load_run_config(run).model.name_or_path, dtype=torch.bfloat16)
tuned = PeftModel.from_pretrained(base, run / "adapter")
lora = {n: p for n, p in tuned.named_parameters() if "lora_" in n}
print(f"adapter of {run.name}: {len(lora)} LoRA tensors, all finite: {all(bool(torch.isfinite(p).all()) for p in lora.values())},"
      f" lora_B moved: {all(p.abs().sum() > 0 for n, p in lora.items() if 'lora_B' in n)}")
PY
fi
python3 - "$RUNS" "$OUT/multi-gpu.json" "$LOG_EVERY" <<'PY'
import glob, json, statistics, sys
from pathlib import Path


out = {}
for run in sorted(glob.glob(sys.argv[1] + "/*")):
    name = run.rsplit("_", 1)[-1]
    events = [json.loads(line) for line in open(run + "/events.jsonl")]
    logs = [e for e in events if e["kind"] == "log"]
    steady = logs[max(1, 3 // int(sys.argv[3])):]  # after the first 3 steps (allocations, autotuning)
    seconds = [(b["elapsed_s"] - a["elapsed_s"]) / (b["step"] - a["step"]) for a, b in zip(steady, steady[1:])]
    devices = [e["memory"].get("devices") or [e["memory"]] for e in logs]
    peaks = [max(d[i].get("gpu_peak") or 0 for d in devices) for i in range(len(devices[-1]))] if devices else []
    end = [e for e in events if e["kind"] == "end"]
    out[name] = {
        "steps": len(logs), "tokens_per_s": statistics.median(e["tokens_per_second"] for e in steady) if steady else None,
        "s_per_step": statistics.median(seconds) if seconds else None, "gpu_peak_gib": peaks,
        "losses": [round(e["loss"], 4) for e in logs], "end": end[-1]["message"][:300] if end else None,
        "placement": next((e["message"] for e in events if e.get("message", "").startswith("Training in")), "one process"),
    }
    print(name, {k: v for k, v in out[name].items() if k != "losses"})
    print("   losses", out[name]["losses"])
for one in [n for n in list(out) if n.startswith("one")]:
    for many in [n for n in list(out) if n.split("-")[0] in ("ddp", "fsdp", "zero2", "zero3") and n.split("-", 1)[1:] == one.split("-", 1)[1:]]:
        if out[one]["tokens_per_s"] and out[many]["tokens_per_s"]:
            out[f"speedup_{many}"] = out[many]["tokens_per_s"] / out[one]["tokens_per_s"]
            print(f"{many} against {one}:", round(out[f"speedup_{many}"], 2))
Path(sys.argv[2]).write_text(json.dumps(out, indent=2))
PY
