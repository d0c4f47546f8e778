"""The GGUF report card: load the file in llama.cpp and compare it with the HF models.

Checks, each pass / warn / fail:
  loads            llama-cpp-python opens the file and its vocabulary size matches
  tensor types     the file holds the types asked for; silent fallbacks are listed
  chat template    the run's template is embedded, byte for byte
  eos              the EOS id in the file is the HF tokenizer's
  tokenizer        llama.cpp and HF tokenize a fixed set of strings identically
  greedy           greedy answers agree with the fine-tuned HF model (matching
                   tokens out of N), and the max logit difference on the first step
  answers          the GGUF's answers are not empty or one token repeated (and
                   whether the fine-tuned HF model itself answers that way)
  fine-tune        on the prompts where base and fine-tuned answer differently,
                   the GGUF follows the fine-tuned model, not the base

The headline is one of three states: passed, passed with warnings (the
warnings named), or failed; "fine-tune lost at this quantization" names the
type to export instead.

    refs = reference_answers(cfg, merged_dir, template, n_tokens=16)
    report = verify_gguf(path, "q4_k_m", refs, tokenizer, template)
    report.state, report.headline, report.save(path.with_suffix(".report.json"))

The report is what the UI's card and the CLI's lines are drawn from; export
events carry it as it is (`event.extra["report"]`).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from studio.export.gguf import EXPECTED_TENSOR_TYPES, UNQUANTIZED, gguf_metadata, tensor_type_counts
from studio.export.references import FIXED_PROMPTS, References, until_stop
from studio.data.templates import Template
from studio.errors import ModelLoadError
from studio.llama_check import check_llama_cpp_runs

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

LOSSLESS_TYPES = ("f16", "bf16")
REPEAT_MIN_TOKENS = 6  # shorter answers ("Paris.") are not judged for repetition
REPEAT_SHARE = 0.5  # one token id making more than this share of an answer is a stuck model
KEPT_SHARE = 0.5  # the GGUF must follow the fine-tune on at least this share of the informative prompts
STATES = {"passed": "PASSED", "warnings": "PASSED WITH WARNINGS", "failed": "FAILED"}


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "pass", "warn" or "fail"
    detail: str


@dataclass(frozen=True)
class Sample:
    """One prompt of the card: the greedy answers of the fine-tuned and base HF models and of the GGUF."""

    prompt: str
    source: str  # a fixed prompt, or a row of the run's data
    hf: str  # the fine-tuned model's answer
    base: str
    gguf: str
    matching_tokens: int  # tokens the GGUF's answer shares with the fine-tuned one, from the start
    of: int  # tokens in the longer of the two
    base_matching_tokens: int  # the same against the base model's answer
    informative: bool  # base and fine-tuned answer differently: the prompt tells whether the fine-tune survived


@dataclass
class GgufReport:
    path: str
    gguf_type: str
    size_bytes: int
    tensor_types: dict[str, int] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    use_instead: str = ""  # the type to export when this one lost the fine-tune

    @property
    def state(self) -> str:
        """passed, warnings (passed with warnings) or failed."""
        statuses = {c.status for c in self.checks}
        return "failed" if "fail" in statuses else "warnings" if "warn" in statuses else "passed"

    @property
    def passed(self) -> bool:
        return self.state != "failed"

    @property
    def fine_tune_lost(self) -> bool:
        """The file works but answers like the base model (broken answers are named as such instead)."""
        failed = {c.name for c in self.checks if c.status == "fail"}
        return "fine-tune" in failed and "answers" not in failed

    @property
    def headline(self) -> str:
        """The verdict in one line: what a person reads first."""
        if self.fine_tune_lost:
            instead = f": export {self.use_instead} instead" if self.use_instead else ""
            return f"FAILED: fine-tune lost at this quantization ({self.gguf_type}){instead}"
        named = ", ".join(c.name for c in self.checks if c.status == ("fail" if self.state == "failed" else "warn"))
        return STATES[self.state] + (f": {named}" if named else "")

    def to_dict(self) -> dict:
        return {**asdict(self), "state": self.state, "headline": self.headline, "passed": self.passed}

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")

    def summary(self) -> str:
        lines = [f"{Path(self.path).name}: {self.headline} ({self.size_bytes / 2**20:.1f} MiB)"]
        lines += [f"  [{c.status}] {c.name}: {c.detail}" for c in self.checks]
        return "\n".join(lines)


def verify_gguf(path: Path, gguf_type: str, references: References, tokenizer, template: Template) -> GgufReport:
    """Load `path` in llama.cpp and check it against the HF models' answers in `references`."""
    from llama_cpp import Llama

    report = GgufReport(str(path), gguf_type, path.stat().st_size, tensor_type_counts(path))
    report.checks.append(_check_tensor_types(report.tensor_types, gguf_type))
    report.checks += _check_metadata(path, tokenizer, template)
    try:
        check_llama_cpp_runs(path)
    except ModelLoadError as exc:
        report.checks.insert(0, Check("loads", "fail", str(exc)))
        return report
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
        answers, max_logit_diff = _gguf_answers(llm, references)
    finally:
        llm.close()
    report.samples = [_sample(r, g, tokenizer) for r, g in zip(references.answers, answers)]
    report.checks.append(_check_greedy(report.samples, gguf_type, max_logit_diff))
    report.checks.append(_check_answers(references, answers, tokenizer))
    report.checks.append(_check_fine_tune(report.samples))
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
        [{"role": "user", "content": FIXED_PROMPTS[0]}], chat_template=template.jinja, tokenize=False, add_generation_prompt=True
    )
    if list(llm.tokenize(rendered.encode("utf-8"), add_bos=False, special=True)) != tokenizer(rendered, add_special_tokens=False)["input_ids"]:
        mismatches.append("(rendered chat prompt)")
    total = len(PARITY_STRINGS) + 1
    if mismatches:
        shown = ", ".join(repr(m[:24]) for m in mismatches[:3])
        return Check("tokenizer", "fail", f"{total - len(mismatches)}/{total} strings tokenize identically; differ: {shown}")
    return Check("tokenizer", "pass", f"{total}/{total} strings tokenize identically (unicode, emoji, code, chat prompt)")


def _gguf_answers(llm, references: References) -> tuple[list[list[int]], float]:
    """llama.cpp's greedy answer to each reference prompt, and the largest first-step logit difference."""
    import numpy as np

    answers, max_logit_diff = [], 0.0
    for ref in references.answers:
        llm.reset()
        tokens = []
        for token in llm.generate(ref.ids, temp=0.0, top_k=1, repeat_penalty=1.0):
            if not tokens:
                diff = np.abs(llm.scores[len(ref.ids) - 1] - ref.tuned_first_logits)
                max_logit_diff = max(max_logit_diff, float(np.nan_to_num(diff, nan=np.inf).max()))
            tokens.append(token)
            if token in references.stops or len(tokens) >= references.n_tokens:
                break
        answers.append(until_stop(tokens, references.stops))
    return answers, max_logit_diff


def _sample(ref, gguf: list[int], tokenizer) -> Sample:
    return Sample(ref.prompt.text, ref.prompt.source, tokenizer.decode(ref.tuned), tokenizer.decode(ref.base),
                  tokenizer.decode(gguf), _common_prefix(ref.tuned, gguf), max(len(ref.tuned), len(gguf)),
                  _common_prefix(ref.base, gguf), ref.informative)


def _check_greedy(samples: list[Sample], gguf_type: str, max_logit_diff: float) -> Check:
    """The GGUF against the merged weights it was made from."""
    matched = sum(s.matching_tokens for s in samples)
    total = sum(max(s.of, 1) for s in samples)
    first_agree = sum(s.matching_tokens > 0 or s.of == 0 for s in samples)
    detail = (f"{matched}/{total} greedy tokens identical to the fine-tuned model over {len(samples)} prompts; "
              f"max first-step logit diff {max_logit_diff:.3g}")
    if matched == total:
        status = "pass"
    elif first_agree * 2 <= len(samples):
        status = "fail"  # most first tokens differ: the file computes something else
    else:
        # Near-ties flip under rounding; a lossless type should still match exactly.
        status = "fail" if gguf_type in LOSSLESS_TYPES and first_agree < len(samples) else "warn"
    if status == "warn":
        detail += "; quantization changes some answers (q8_0 or q6_k stay closer to the trained model)"
    return Check("greedy", status, detail)


def _check_answers(references: References, gguf_answers: list[list[int]], tokenizer) -> Check:
    """Empty answers or one token repeated: a broken file (fail), or a broken model exported faithfully (warn)."""
    stuck = [i for i, answer in enumerate(gguf_answers) if degenerate(answer, references.stops, tokenizer)]
    n = len(gguf_answers)
    if not stuck:
        return Check("answers", "pass", f"no empty or single-token answers over {n} prompts")
    first = degenerate(gguf_answers[stuck[0]], references.stops, tokenizer)
    detail = f"the GGUF's answers are empty or stuck on one token for {len(stuck)}/{n} prompts (e.g. {first})"
    file_only = [i for i in stuck if not degenerate(references.answers[i].tuned, references.stops, tokenizer)]
    if len(file_only) < len(stuck):
        detail += (f"; the fine-tuned HF model answers that way too on {len(stuck) - len(file_only)} of them: the "
                   "training broke the model, not the export (retrain with a lower learning rate, or export an "
                   "earlier checkpoint)")
    if file_only:
        detail += f"; on {len(file_only)} the fine-tuned HF model answers normally: the file is broken there"
    return Check("answers", "fail" if len(file_only) * 2 > n else "warn", detail)


def degenerate(tokens: list[int], stops: set[int], tokenizer) -> str:
    """Why an answer is degenerate ("empty", "token 17 repeated 14/16 times"), or "" when it is not."""
    content = [t for t in tokens if t not in stops]
    if not tokenizer.decode(content, skip_special_tokens=True).strip():
        return "empty"
    token, count = Counter(content).most_common(1)[0]
    if len(content) >= REPEAT_MIN_TOKENS and count > REPEAT_SHARE * len(content):
        return f"{tokenizer.decode([token])!r} repeated {count}/{len(content)} times"
    return ""


def _check_fine_tune(samples: list[Sample]) -> Check:
    """Does the GGUF answer like the fine-tuned model or like the base, where the two differ?"""
    informative = [s for s in samples if s.informative]
    if not informative:
        return Check("fine-tune", "warn",
                     f"base and fine-tuned models answer alike on all {len(samples)} prompts: the card cannot tell "
                     "whether the fine-tune survived (compare the models in Chat, or train longer)")
    kept = sum(s.matching_tokens > s.base_matching_tokens for s in informative)
    lost = sum(s.base_matching_tokens > s.matching_tokens for s in informative)
    n = len(informative)
    detail = (f"on the {n} prompts where base and fine-tuned answer differently, the GGUF follows the fine-tuned "
              f"model on {kept}, the base model on {lost}, neither on {n - kept - lost}")
    if lost > kept or kept < KEPT_SHARE * n:
        return Check("fine-tune", "fail", detail + ": the fine-tune did not survive this quantization")
    if lost:
        return Check("fine-tune", "warn", detail + ": some answers fell back to the base model's")
    return Check("fine-tune", "pass", detail)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
