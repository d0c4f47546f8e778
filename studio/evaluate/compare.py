"""Several runs side by side: their loss curves, how their configs differ, how they ended.

    comparison = compare_runs([run_a, run_b])
    comparison.curves        # (run, step, series, value) points: series "loss" or "eval loss"
    comparison.differences   # {"train.learning_rate": ["0.0002", "0.003"], ...}: only keys that differ
    comparison.finals        # one dict per run: state, step, last loss, last/lowest eval loss, latest scores

Run as:  python launch.py compare runs/<run-a> runs/<run-b>
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from studio.errors import StudioError


@dataclass(frozen=True)
class Comparison:
    runs: list[str]
    curves: list[tuple[str, int, str, float]]
    differences: dict[str, list[str]]
    finals: list[dict]


def compare_runs(run_dirs: list[Path]) -> Comparison:
    """Curves, config differences and final scores of `run_dirs` (two or more)."""
    if len(run_dirs) < 2:
        raise StudioError("Pick at least two runs to compare.")
    names = [run_dir.name for run_dir in run_dirs]
    curves = [point for run_dir in run_dirs for point in run_curves(run_dir)]
    return Comparison(names, curves, config_differences(run_dirs), [final_scores(r) for r in run_dirs])


def run_curves(run_dir: Path) -> list[tuple[str, int, str, float]]:
    """(run, step, "loss" or "eval loss", value) for every finite logged value (a NaN is no point at all)."""
    import math

    from studio.events import read_events

    path = run_dir / "events.jsonl"
    events = read_events(path) if path.is_file() else []
    points = []
    for e in events:
        for series, value in (("loss", e.loss if e.kind == "log" else None),
                              ("eval loss", e.eval_loss if e.kind == "eval" else None)):
            if value is not None and e.step is not None and math.isfinite(value):
                points.append((run_dir.name, e.step, series, value))
    return points


def config_differences(run_dirs: list[Path]) -> dict[str, list[str]]:
    """Dotted config keys whose values are not the same in every run, with each run's value."""
    from studio.recipes import to_dict
    from studio.runs import load_run_config

    flat = [_flatten(to_dict(load_run_config(r))) for r in run_dirs]
    keys = sorted({k for f in flat for k in f})
    return {k: [str(f.get(k, "")) for f in flat] for k in keys if len({repr(f.get(k)) for f in flat}) > 1}


def _flatten(config: dict) -> dict:
    """{"train": {"learning_rate": 0.003}} -> {"train.learning_rate": 0.003} (sections only; a mapping field stays whole)."""
    out = {}
    for section, value in config.items():
        if isinstance(value, dict):
            out.update({f"{section}.{key}": inner for key, inner in value.items()})
        else:
            out[section] = value
    return out


def final_scores(run_dir: Path) -> dict:
    """How the run ended (state, step, losses) and the fine-tuned model's scores of its latest evaluation."""
    from studio.evaluate.store import list_evals, load_eval
    from studio.runs import run_state

    state = run_state(run_dir)
    evals = [value for _, _, series, value in run_curves(run_dir) if series == "eval loss"]
    final = {"run": run_dir.name, "state": state.state, "step": state.status.get("step"),
             "loss": state.status.get("loss"), "eval loss": evals[-1] if evals else None,
             "lowest eval loss": min(evals) if evals else None}
    saved = list_evals(run_dir)
    if saved:
        card = load_eval(saved[-1]).scorecard
        tuned = card.model(card.best) if card.best else None
        if tuned is not None:
            final.update({f"{k} ({tuned.name})": round(v, 4) for k, v in tuned.scores.items()
                          if k in ("loss", "rouge_l", "bleu", "stop_rate")})
    return final
