"""Saved evaluations: <run>/evals/<YYYYmmdd-HHMMSS>/ with rows.jsonl, generations.jsonl and scores.json.

A folder is written as <time>.part and renamed when the job ends (completed or
stopped: a stopped one says "partial": true), so a folder without .part is
whole. A job that was killed outright (kill -9, a power cut) leaves only a .part
folder: it is never listed, and it is removed by the next evaluation or listing
of the run that finds nobody holding the run's lock.

    result = load_eval(list_evals(run_dir)[-1])
    result.scorecard, result.rows, result.outputs["fine-tuned"][3]
    side_by_side(result, show="dropped", first="fine-tuned", second="model-q8_0.gguf")
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from studio.errors import RunNotFoundError
from studio.evaluate.scorecard import ModelRow, Scorecard

ROW_FILTERS = ("all", "differ", "dropped")


@dataclass
class EvalResult:
    folder: Path
    meta: dict
    scorecard: Scorecard
    rows: list[dict] = field(default_factory=list)  # where, prompt, reference
    outputs: dict[str, dict[int, dict]] = field(default_factory=dict)  # model -> row -> generation line

    @property
    def partial(self) -> bool:
        return self.scorecard.partial

    @classmethod
    def finish(cls, folder: Path, meta: dict, card: Scorecard) -> "EvalResult":
        """Write scores.json, then give the folder its final name."""
        scores = {**meta, "partial": card.partial, "metric": card.metric, "best": card.best, "verdict": card.verdict,
                  "warnings": card.warnings, "models": [asdict(m) for m in card.models]}
        (folder / "scores.json").write_text(json.dumps(scores, indent=2, ensure_ascii=False), encoding="utf-8")
        final = folder.with_name(folder.name.removesuffix(".part"))
        os.replace(folder, final)
        return load_eval(final)


def new_eval_folder(run_dir: Path) -> Path:
    base = run_dir / "evals" / time.strftime("%Y%m%d-%H%M%S")
    name, n = base.name, 1
    while base.exists() or base.with_name(base.name + ".part").exists():
        n += 1
        base = base.with_name(f"{name}-{n}")
    folder = base.with_name(base.name + ".part")
    folder.mkdir(parents=True)
    return folder


def list_evals(run_dir: Path) -> list[Path]:
    """The run's finished (or stopped) evaluations, oldest first (stale .part folders of killed jobs removed)."""
    from studio.errors import RunBusyError
    from studio.runs import lock_run

    root = run_dir / "evals"
    if any(root.glob("*.part")):
        try:
            with lock_run(run_dir, "cleaning evaluations"):
                remove_stale_parts(run_dir)
        except (RunBusyError, OSError):
            pass  # a job holds the run (its .part is live), or the folder is read-only: list without cleaning
    return sorted(p.parent for p in root.glob("*/scores.json") if not p.parent.name.endswith(".part"))


def remove_stale_parts(run_dir: Path) -> list[Path]:
    """Remove the .part folders of evaluations whose process died. Call it holding the run's lock: then no
    evaluation of the run is alive, and every .part folder is a killed one's."""
    stale = sorted(p for p in (run_dir / "evals").glob("*.part") if p.is_dir())
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale


def load_eval(folder: Path) -> EvalResult:
    """A saved evaluation with its scorecard, rows and every model's answers."""
    path = Path(folder) / "scores.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RunNotFoundError(f"{path} cannot be read ({exc}). Run the evaluation again.") from None
    models = [ModelRow(**m) for m in saved["models"]]
    card = Scorecard(saved["metric"], models, saved.get("best"), saved["verdict"], saved["warnings"], saved["partial"])
    result = EvalResult(Path(folder), saved, card, _jsonl(Path(folder) / "rows.jsonl"))
    for line in _jsonl(Path(folder) / "generations.jsonl"):
        result.outputs.setdefault(line["model"], {})[line["row"]] = line
    return result


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    lines = []
    for text in path.read_text(encoding="utf-8").splitlines():
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:  # a line torn by a kill: what came before it stands
            continue
    return lines


# ---------------------------------------------------------------- the row viewer


def side_by_side(result: EvalResult, show: str = "all", first: str | None = None,
                 second: str | None = None) -> tuple[list[str], list[list]]:
    """Header and rows: input, reference and each model's answer; `show` keeps the rows that matter.

    "differ": rows where the models' answers are not all the same.
    "dropped": rows where `second` scores a lower ROUGE-L than `first` (say, the GGUF below the fine-tuned model).
    """
    models = list(result.outputs)
    header = ["row", "input", "reference", *models]
    table = []
    for index, row in enumerate(result.rows):
        answers = [result.outputs[m].get(index) for m in models]
        if show == "differ" and len({a["output"] for a in answers if a}) < 2:
            continue
        if show == "dropped" and not _dropped(result, index, first, second):
            continue
        prompt = [m["content"] for m in row["prompt"] if m["role"] == "user"]
        table.append([row["where"], prompt[-1] if prompt else "", row["reference"],
                      *[(a["output"] if a else "") for a in answers]])
    return header, table


def _dropped(result: EvalResult, index: int, first: str | None, second: str | None) -> bool:
    a = result.outputs.get(first or "", {}).get(index)
    b = result.outputs.get(second or "", {}).get(index)
    return a is not None and b is not None and b["rouge_l"] < a["rouge_l"]
