"""The GGUF report card: load the file in llama.cpp and compare it with the HF model.

Checks, each pass / warn / fail:
  loads            llama-cpp-python opens the file and its vocabulary size matches
  tensor types     the file holds the types asked for; silent fallbacks are listed
  chat template    the run's template is embedded, byte for byte
  eos              the EOS id in the file is the HF tokenizer's
  tokenizer        llama.cpp and HF tokenize a fixed set of strings identically
  greedy           greedy continuations of fixed prompts agree (matching tokens
                   out of N), and the max logit difference on the first step

    report = verify_gguf(path, "q4_k_m", hf_model, tokenizer, template, n_tokens=16)
    report.passed, report.save(path.with_suffix(".report.json"))
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from studio.gguf_tools import EXPECTED_TENSOR_TYPES, UNQUANTIZED, gguf_metadata, tensor_type_counts
from studio.templates import Template, prompt_ids, stop_token_ids

PARITY_STRINGS = (
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces, trailing spaces  ",
    "Numbers: 3.14159, 1,000,000 and 42.",
    "Tabs\tand\nnew lines\n\n",
    "Ünïcödé: café, naïve, Straße, Ærø",
    "中文测试：你好，世界",
    "日本語のテキスト",
    "Emoji 🚀🦙✅ and symbols ©®™ → ≠ ≤",
    "def main():\n    return {'key': [1, 2, 3]}",
)

VERIFY_PROMPTS = (
    "What is the capital of France?",
    "Give three tips for staying healthy.",
    "Write a short sentence about the sea.",
)

LOSSLESS_TYPES = ("f16", "bf16")


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "pass", "warn" or "fail"
    detail: str


@dataclass
class GgufReport:
    path: str
    gguf_type: str
    size_bytes: int
    tensor_types: dict[str, int] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")

    def summary(self) -> str:
        lines = [f"{Path(self.path).name}: {'PASSED' if self.passed else 'FAILED'} ({self.size_bytes / 2**20:.1f} MiB)"]
        lines += [f"  [{c.status}] {c.name}: {c.detail}" for c in self.checks]
        return "\n".join(lines)


def verify_gguf(path: Path, gguf_type: str, hf_model, tokenizer, template: Template, n_tokens: int = 16) -> GgufReport:
    """Load `path` in llama.cpp and check it against `hf_model` and `tokenizer`."""
    from llama_cpp import Llama

    report = GgufReport(str(path), gguf_type, path.stat().st_size, tensor_type_counts(path))
    report.checks.append(_check_tensor_types(report.tensor_types, gguf_type))
    report.checks += _check_metadata(path, tokenizer, template)
    try:
        llm = Llama(model_path=str(path), n_ctx=512, logits_all=True, verbose=False, seed=0)
    except Exception as exc:  # llama.cpp reports load failures as ValueError or RuntimeError
        report.checks.insert(0, Check("loads", "fail", f"llama.cpp could not load the file: {exc}"))
        return report
    try:
        vocab_ok = llm.n_vocab() == len(tokenizer)
        report.checks.insert(0, Check("loads", "pass" if vocab_ok else "fail",
                                      f"loaded; vocabulary {llm.n_vocab()} tokens (HF: {len(tokenizer)})"))
        report.checks.append(_check_tokenizer(llm, tokenizer, template))
        greedy, samples = _check_greedy(llm, hf_model, tokenizer, template, gguf_type, n_tokens)
        report.checks.append(greedy)
        report.samples = samples
    finally:
        llm.close()
    return report


def _check_tensor_types(counts: dict[str, int], gguf_type: str) -> Check:
    expected = EXPECTED_TENSOR_TYPES[gguf_type]
    wanted = sum(n for t, n in counts.items() if t in expected)
    fallback = {t: n for t, n in counts.items() if t not in expected | UNQUANTIZED}
    listing = ", ".join(f"{n} {t}" for t, n in sorted(counts.items()))
    if wanted == 0:
        return Check("tensor types", "fail", f"no tensor is {'/'.join(sorted(expected))}: {listing}")
    if fallback:
        return Check("tensor types", "warn",
                     f"{listing}; {sum(fallback.values())} tensors fell back to {', '.join(sorted(fallback))} "
                     "(their rows are not a multiple of the block size)")
    return Check("tensor types", "pass", listing)


def _check_metadata(path: Path, tokenizer, template: Template) -> list[Check]:
    meta = gguf_metadata(path, ("tokenizer.chat_template", "tokenizer.ggml.eos_token_id"))
    embedded = meta.get("tokenizer.chat_template")
    if embedded is None:
        template_check = Check("chat template", "fail", "no chat template embedded: llama.cpp would fall back to a generic one")
    elif embedded != template.jinja:
        template_check = Check("chat template", "fail", "the embedded template differs from the run's template")
    else:
        template_check = Check("chat template", "pass", f"embedded ({template.name}, {len(embedded)} chars)")
    eos = meta.get("tokenizer.ggml.eos_token_id")
    if eos == tokenizer.eos_token_id:
        eos_check = Check("eos", "pass", f"EOS id {eos} ({tokenizer.eos_token!r})")
    else:
        eos_check = Check("eos", "fail", f"EOS id in file is {eos}, HF tokenizer has {tokenizer.eos_token_id}")
    return [template_check, eos_check]


def _check_tokenizer(llm, tokenizer, template: Template) -> Check:
    mismatches = []
    for text in PARITY_STRINGS:
        ours = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        theirs = tokenizer(text, add_special_tokens=False)["input_ids"]
        if list(ours) != list(theirs):
            mismatches.append(text)
    # The rendered chat prompt, special tokens included, as chat will send it.
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": VERIFY_PROMPTS[0]}], chat_template=template.jinja, tokenize=False, add_generation_prompt=True
    )
    if list(llm.tokenize(rendered.encode("utf-8"), add_bos=False, special=True)) != tokenizer(rendered, add_special_tokens=False)["input_ids"]:
        mismatches.append("(rendered chat prompt)")
    total = len(PARITY_STRINGS) + 1
    if mismatches:
        shown = ", ".join(repr(m[:24]) for m in mismatches[:3])
        return Check("tokenizer", "fail", f"{total - len(mismatches)}/{total} strings tokenize identically; differ: {shown}")
    return Check("tokenizer", "pass", f"{total}/{total} strings tokenize identically (unicode, emoji, code, chat prompt)")


def _check_greedy(llm, hf_model, tokenizer, template: Template, gguf_type: str, n_tokens: int) -> tuple[Check, list[dict]]:
    import numpy as np
    import torch

    stops = set(stop_token_ids(tokenizer))
    matched = total = first_agree = 0
    max_logit_diff = 0.0
    samples = []
    for prompt in VERIFY_PROMPTS:
        ids = prompt_ids(tokenizer, template, [{"role": "user", "content": prompt}])
        with torch.no_grad():
            out = hf_model.generate(
                torch.tensor([ids], device=hf_model.device), max_new_tokens=n_tokens, do_sample=False,
                eos_token_id=sorted(stops), pad_token_id=tokenizer.pad_token_id, output_scores=True,
                return_dict_in_generate=True,
            )
        hf_tokens = _until_stop(out.sequences[0, len(ids):].tolist(), stops)
        hf_first_logits = out.scores[0][0].float().cpu().numpy()

        llm.reset()
        gguf_tokens = []
        for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0):
            if not gguf_tokens:
                max_logit_diff = max(max_logit_diff, float(np.abs(llm.scores[len(ids) - 1] - hf_first_logits).max()))
            gguf_tokens.append(token)
            if token in stops or len(gguf_tokens) >= n_tokens:
                break
        gguf_tokens = _until_stop(gguf_tokens, stops)

        agree = _common_prefix(hf_tokens, gguf_tokens)
        matched += agree
        total += max(len(hf_tokens), len(gguf_tokens), 1)
        first_agree += bool(hf_tokens[:1] == gguf_tokens[:1])
        samples.append({"prompt": prompt, "hf": tokenizer.decode(hf_tokens), "gguf": tokenizer.decode(gguf_tokens),
                        "matching_tokens": agree, "of": max(len(hf_tokens), len(gguf_tokens))})
    detail = f"{matched}/{total} greedy tokens identical over {len(VERIFY_PROMPTS)} prompts; max first-step logit diff {max_logit_diff:.3g}"
    if matched == total:
        status = "pass"
    elif first_agree * 2 <= len(VERIFY_PROMPTS):
        status = "fail"  # most first tokens differ: the file computes something else
    else:
        # Near-ties flip under rounding; a lossless type should still match exactly.
        status = "fail" if gguf_type in LOSSLESS_TYPES and first_agree < len(VERIFY_PROMPTS) else "warn"
    if status == "warn":
        detail += "; quantization changes some answers (q8_0 or q6_k stay closer to the trained model)"
    return Check("greedy", status, detail), samples


def _until_stop(tokens: list[int], stops: set[int]) -> list[int]:
    for i, token in enumerate(tokens):
        if token in stops:
            return tokens[: i + 1]
    return tokens


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
