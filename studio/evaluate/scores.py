"""Scores of one model's answers against the rows' reference answers.

    loss, perplexity  on the reference answers (the tokens training scores); lower is better
    exact_match       answer equals the reference (whitespace and case aside)
    rouge_l           ROUGE-L F1 (rouge-score, Google's reference implementation), 0-1
    bleu              corpus BLEU (sacrebleu), 0-100
    length_ratio      answer words / reference words (1.0: as long as the references)
    stop_rate         share of answers that ended at EOS / end of turn, not at max_new_tokens:
                      runaway answers are the classic sign of a template or EOS problem
    check:<name>      share of answers passing a check the user defined (regex, json, contains)

    scores = model_scores(outputs, references, losses, checks)
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from studio.errors import ConfigError
from studio.evaluate.generate import Output, RowLoss

# Metrics a verdict can rank by, and which way is better.
LOWER_IS_BETTER = {"loss", "perplexity"}
METRICS = ("loss", "perplexity", "rouge_l", "bleu", "exact_match", "stop_rate")
CHECK_KINDS = ("regex", "json", "contains")


def normalize(text: str) -> str:
    return " ".join(text.split()).casefold()


def rouge_l(output: str, reference: str) -> float:
    return _rouge_scorer().score(reference, output)["rougeL"].fmeasure


@functools.cache
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"])


def corpus_bleu(outputs: Sequence[str], references: Sequence[str]) -> float:
    import sacrebleu

    return sacrebleu.corpus_bleu(list(outputs), [list(references)]).score


# ---------------------------------------------------------------- checks


@dataclass(frozen=True)
class Check:
    """A test every answer should pass: `regex:PATTERN` (the answer matches), `json` (it parses), or
    `contains` (the reference answer appears in it, case aside: the exact answer was given)."""

    kind: str
    pattern: str = ""

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.pattern}" if self.pattern else self.kind

    def passes(self, output: str, reference: str) -> bool:
        if self.kind == "regex":
            return re.search(self.pattern, output) is not None
        if self.kind == "json":
            try:
                json.loads(output)
            except ValueError:
                return False
            return True
        return normalize(reference) in normalize(output)


def parse_check(text: str) -> Check:
    """"regex:^\\d+$", "json" or "contains"; ConfigError saying how to write one otherwise."""
    kind, _, pattern = text.strip().partition(":")
    if kind not in CHECK_KINDS or (kind == "regex") != bool(pattern):
        raise ConfigError(f"Check {text!r}: write regex:PATTERN (the answer matches PATTERN), json (the answer is "
                          "valid JSON) or contains (the reference answer appears in the answer).")
    if kind == "regex":
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"Check {text!r}: the regular expression is invalid ({exc}).") from None
    return Check(kind, pattern)


def save_checks(path: Path, checks: Sequence[Check]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([c.name for c in checks], indent=2), encoding="utf-8")


def load_checks(path: Path) -> list[Check]:
    """The checks defined once for a run (its evals/checks.json), or none."""
    if not path.is_file():
        return []
    return [parse_check(text) for text in json.loads(path.read_text(encoding="utf-8"))]


# ---------------------------------------------------------------- per row and per model


def row_scores(output: Output, reference: str, loss: RowLoss | None, checks: Sequence[Check]) -> dict:
    """What one answer scored: exact, rouge_l, loss (mean over its answer tokens), each check."""
    scores = {"exact": normalize(output.text) == normalize(reference), "rouge_l": rouge_l(output.text, reference)}
    if loss is not None and loss.tokens:
        scores["loss"] = loss.nll / loss.tokens
    scores.update({f"check:{c.name}": c.passes(output.text, reference) for c in checks})
    return scores


def model_scores(outputs: Sequence[Output], references: Sequence[str], losses: Sequence[RowLoss | None],
                 checks: Sequence[Check] = ()) -> dict[str, float]:
    """The metrics above for one model over all its rows (loss and perplexity weighted by token)."""
    n = len(outputs)
    if not n:
        return {}
    texts = [o.text for o in outputs]
    scores = {
        "exact_match": sum(normalize(t) == normalize(r) for t, r in zip(texts, references)) / n,
        "rouge_l": sum(rouge_l(t, r) for t, r in zip(texts, references)) / n,
        "bleu": corpus_bleu(texts, references),
        "length_ratio": sum(len(t.split()) for t in texts) / max(1, sum(len(r.split()) for r in references)),
        "stop_rate": sum(o.stopped for o in outputs) / n,
    }
    scored = [loss for loss in losses if loss is not None and loss.tokens]
    if scored:
        scores["loss"] = sum(loss.nll for loss in scored) / sum(loss.tokens for loss in scored)
        scores["perplexity"] = math.exp(min(scores["loss"], 700.0))  # exp overflows a float past ~709
    for check in checks:
        scores[f"check:{check.name}"] = sum(check.passes(t, r) for t, r in zip(texts, references)) / n
    return scores


def better(metric: str, a: float, b: float) -> bool:
    """Whether score `a` beats `b` on `metric`."""
    return a < b if metric in LOWER_IS_BETTER else a > b
