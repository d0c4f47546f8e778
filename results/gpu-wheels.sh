#!/usr/bin/env bash
# The packages a GPU call carries as .whl/ (the GPU machine has no network and lacks the studio's pins):
#   bash results/gpu-wheels.sh        # from the repository root, after scripts/setup.sh (DeepSpeed builds
#                                     # against .venv's torch); ~27 MB, listed in .git/info/exclude
# The GPU machine's image has torch, accelerate, tokenizers, huggingface-hub, einops, msgpack, ninja and
# py-cpuinfo; the rest is pinned as in requirements.txt. bitsandbytes keeps only its CUDA 13.0 and CPU
# libraries (its wheel is 43 MB with every CUDA version's). On the GPU machine:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
mkdir -p .whl
P="--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
   --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any"
pin() { grep -i "^$1==" requirements.txt; }
have() { echo "$1==$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))")"; }  # as in .venv
python3 -m pip download -q --no-deps $P -d .whl \
  "$(pin transformers)" "$(pin trl)" "$(pin peft)" "$(pin datasets)" "$(pin bitsandbytes)" "$(pin galore-torch)" \
  "$(pin hjson)" "$(have dill)" "$(have multiprocess)" liger-kernel==0.8.5 \
  "$(have pydantic)" "$(have pydantic_core)" "$(have annotated-types)" "$(have typing-inspection)"
for w in .whl/bitsandbytes-*.whl; do  # drop the libraries of other CUDA versions, ROCm and XPU
  zip -q -d "$w" $(unzip -Z1 "$w" | grep -E '\.so$' | grep -v -E 'cuda130|_cpu') > /dev/null
done
ls .whl/deepspeed-*.whl > /dev/null 2>&1 || DS_BUILD_OPS=0 .venv/bin/python -m pip wheel -q --no-deps \
  --no-build-isolation -w .whl "$(pin deepspeed || echo deepspeed==0.19.8)"
du -sh .whl
