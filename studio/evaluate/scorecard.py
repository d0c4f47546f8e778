"""The verdict of an evaluation: which model to ship, what the GGUF kept, what went wrong.

    card = build_scorecard(models, metric="loss", curve=eval_curve(run_dir), partial=False)
    card.best            # "checkpoint-40": the fine-tuned weights to ship, by the chosen metric
    card.verdict         # plain sentences: best, fine-tuned vs base, each GGUF vs the fine-tuned model
    card.warnings        # overfitting since step N, answers that no longer stop, a GGUF that lost the gain
    print(format_scorecard(card, run_dir))   # the verdict names the command that exports the best weights
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from studio.evaluate.scores import LOWER_IS_BETTER, better

TUNED_KINDS = ("tuned", "checkpoint")
# A GGUF keeping less than this share of the fine-tune's gain over the base has lost most of it.
KEPT_GAIN_WARNING = 0.5
# Eval loss this far (relative) above its lowest point counts as rising, not noise.
OVERFIT_MARGIN = 0.02
# Fewer answers than this share ending on their own: the model does not stop.
STOP_RATE_WARNING = 0.5
TABLE_METRICS = ("loss", "perplexity", "rouge_l", "bleu", "exact_match", "length_ratio", "stop_rate")


@dataclass(frozen=True)
class ModelRow:
    """One line of the scorecard: a model and its scores over `rows` rows."""

    name: str
    kind: str  # base, tuned, checkpoint, gguf, other
    step: int | None
    rows: int
    scores: dict
    rows_per_s: float | None = None  # answers per second (generation alone)
    path: str = ""


@dataclass(frozen=True)
class Scorecard:
    metric: str
    models: list[ModelRow]
    best: str | None = None
    verdict: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    partial: bool = False

    def model(self, name: str) -> ModelRow | None:
        return next((m for m in self.models if m.name == name), None)


def build_scorecard(models: list[ModelRow], metric: str, curve: list[tuple[int, float]] = (),
                    partial: bool = False) -> Scorecard:
    """Rank the fine-tuned weights by `metric`, compare them with the base and the GGUF files, and warn."""
    best = best_model(models, metric)
    verdict, warnings = [], []
    if partial:
        warnings.append("The evaluation was stopped: these scores cover only the rows and models it reached.")
    if best is not None:
        verdict.append(f"Ship {best.name}: best {metric} among the fine-tuned weights ({_fmt(metric, best.scores[metric])}).")
        verdict += _against_base(models, metric, best, warnings)
        verdict += _ggufs(models, metric, warnings)
    since = overfitting_step(curve) or overfitting_step(_checkpoint_losses(models))
    if since is not None:
        warnings.append(f"Overfitting since step {since}: the eval loss was lowest there and rose afterwards. "
                        "Ship that checkpoint, or train with fewer steps, a lower learning rate or more data "
                        "(train.early_stopping keeps the best weights).")
    warnings += _runaway(models)
    return Scorecard(metric, list(models), best.name if best else None, verdict, warnings, partial)


def best_model(models: list[ModelRow], metric: str) -> ModelRow | None:
    """The fine-tuned model or checkpoint that scores best on `metric` (the final weights win ties)."""
    best = None
    for m in sorted((m for m in models if m.kind in TUNED_KINDS and metric in m.scores), key=lambda m: m.kind != "tuned"):
        if best is None or better(metric, m.scores[metric], best.scores[metric]):
            best = m
    return best


def _against_base(models: list[ModelRow], metric: str, best: ModelRow, warnings: list[str]) -> list[str]:
    base, tuned = _find(models, "base"), _find(models, "tuned")
    if base is None or tuned is None or metric not in base.scores or metric not in tuned.scores:
        return []
    a, b = tuned.scores[metric], base.scores[metric]
    if better(metric, a, b):
        return [f"The fine-tuned model beats the base model on {metric}: {_fmt(metric, a)} against {_fmt(metric, b)}."]
    warnings.append(f"The fine-tuned model does not beat the base model on {metric} ({_fmt(metric, a)} against "
                    f"{_fmt(metric, b)}): the training did not help on these rows.")
    return []


def _ggufs(models: list[ModelRow], metric: str, warnings: list[str]) -> list[str]:
    """Each GGUF against the weights it was exported from: the difference, and how much of the gain over the base it kept."""
    base = _find(models, "base")
    lines = []
    for gguf in (m for m in models if m.kind == "gguf" and metric in m.scores):
        source = exported_from(gguf, models)
        if source is None or metric not in source.scores:
            continue
        diff = gguf.scores[metric] - source.scores[metric]
        against = "the fine-tuned model" if source.kind == "tuned" else source.name
        text = f"{gguf.name}: {metric} {_fmt(metric, gguf.scores[metric])} ({diff:+.4g} against {against})"
        kept = kept_gain(metric, base, source, gguf)
        if kept is not None:
            text += f", keeps {kept:.0%} of the fine-tune's gain over the base"
            if kept < KEPT_GAIN_WARNING:
                warnings.append(f"{gguf.name} lost most of the fine-tune's gain: it keeps {max(kept, 0):.0%} of the "
                                f"improvement on {metric}. Is it an export of this run's final weights? Otherwise "
                                "try a higher-precision type (q8_0, f16).")
        lines.append(text + ".")
    return lines


def exported_from(gguf: ModelRow, models: list[ModelRow]) -> ModelRow | None:
    """The scored weights a GGUF was made from: the checkpoint its name carries (<name>-checkpoint-40-q8_0.gguf),
    else the final fine-tuned weights."""
    named = [m for m in models if m.kind == "checkpoint" and f"-{m.name}-" in gguf.name]
    return named[0] if named else _find(models, "tuned")


def export_command(card: Scorecard, run_dir: Path) -> str | None:
    """The command that exports the weights the verdict ships: the best checkpoint's, or the final ones."""
    import shlex

    best = card.model(card.best) if card.best else None
    if best is None:
        return None
    command = f"python launch.py export {shlex.quote(str(run_dir))}"
    return command + (f" --checkpoint {best.name}" if best.kind == "checkpoint" else "")


def kept_gain(metric: str, base: ModelRow | None, tuned: ModelRow, other: ModelRow) -> float | None:
    """Share of the fine-tune's improvement over the base that `other` keeps (1.0: all of it), or None."""
    if base is None or metric not in base.scores:
        return None
    gain = tuned.scores[metric] - base.scores[metric]
    if gain == 0 or not better(metric, tuned.scores[metric], base.scores[metric]):
        return None
    return (other.scores[metric] - base.scores[metric]) / gain


def overfitting_step(points: list[tuple[int, float]]) -> int | None:
    """The step of the lowest eval loss when the loss clearly rose after it, else None."""
    points = sorted(points)
    if len(points) < 2:
        return None
    low_step, low = min(points, key=lambda p: (p[1], p[0]))
    if low_step != points[-1][0] and points[-1][1] > low * (1 + OVERFIT_MARGIN):
        return low_step
    return None


def _checkpoint_losses(models: list[ModelRow]) -> list[tuple[int, float]]:
    return [(m.step, m.scores["loss"]) for m in models if m.kind == "checkpoint" and "loss" in m.scores]


def _runaway(models: list[ModelRow]) -> list[str]:
    base = _find(models, "base")
    warnings = []
    for m in models:
        rate = m.scores.get("stop_rate")
        if m.kind == "base" or rate is None or rate >= STOP_RATE_WARNING:
            continue
        was = f" (the base model stopped in {base.scores['stop_rate']:.0%})" if base and "stop_rate" in base.scores else ""
        warnings.append(f"{m.name} no longer stops: only {rate:.0%} of its answers ended on their own{was}; the rest "
                        "ran to max_new_tokens. Check that the template ends answers with EOS and that the GGUF "
                        "embeds the same EOS, or raise generation.max_new_tokens if the answers are long.")
    return warnings


def eval_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, eval loss) points the run's training logged (events.jsonl)."""
    from studio.events import read_events

    path = run_dir / "events.jsonl"
    if not path.is_file():
        return []
    return [(e.step, e.eval_loss) for e in read_events(path) if e.kind == "eval" and e.eval_loss is not None]


def _find(models: list[ModelRow], kind: str) -> ModelRow | None:
    return next((m for m in models if m.kind == kind), None)


def _fmt(metric: str, value: float) -> str:
    return f"{value:.4f}" if metric in LOWER_IS_BETTER or value < 1.5 else f"{value:.2f}"


# ---------------------------------------------------------------- as text


def table_rows(card: Scorecard) -> tuple[list[str], list[list]]:
    """Header and rows of the scorecard table (numbers rounded for people; missing scores empty)."""
    extra = sorted({k for m in card.models for k in m.scores if k.startswith("check:")})
    metrics = [k for k in TABLE_METRICS if any(k in m.scores for m in card.models)] + extra
    header = ["model", "rows", *metrics, "rows/s"]
    rows = []
    for m in card.models:
        mark = " ★" if m.name == card.best else ""
        cells = [round(m.scores[k], 4) if k in m.scores else None for k in metrics]
        rows.append([m.name + mark, m.rows, *cells, round(m.rows_per_s, 2) if m.rows_per_s else None])
    return header, rows


def format_scorecard(card: Scorecard, run_dir: Path | None = None) -> str:
    """The scorecard as a plain text table with the verdict and warnings under it (for the terminal).

    With `run_dir`, the verdict that names the weights to ship also names the command that exports them.
    """
    header, rows = table_rows(card)
    cells = [header] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    verdict = list(card.verdict)
    command = export_command(card, run_dir) if run_dir is not None else None
    if command and verdict:
        verdict[0] += f" Export it: {command}"
    lines += [""] + [f"verdict: {v}" for v in verdict] + [f"warning: {w}" for w in card.warnings]
    return "\n".join(lines)
