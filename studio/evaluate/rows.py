"""Which rows an evaluation runs on: the run's eval split, a file, or a sample of its training rows.

The eval split is rebuilt exactly as training built it (same shuffle, same cut,
same rows left out), so "held out" means the rows the model never trained on.
A training sample checks memorisation: a model that scores far better there than
on held-out rows learnt the rows, not the task.

    rows = select_rows(run_dir, tokenizer, template, source="eval", limit=50)
    rows.rows[0].prompt, rows.rows[0].reference
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

from studio.config import DataConfig, RunConfig
from studio.data.building import build_dataset
from studio.data.formats import column_text, load_rows, to_messages
from studio.data.pairs import label_of
from studio.data.prompts import prompt_messages
from studio.errors import DataError, StudioError
from studio.data.files import Row
from studio.data.templates import Template
from studio.train.methods import method_for

SOURCES = ("eval", "train")  # or the path of a data file


@dataclass(frozen=True)
class EvalRow:
    """One row to evaluate: the conversation up to the last answer, and that answer (the reference)."""

    where: str  # "data.jsonl:12"
    prompt: tuple[dict, ...]  # messages before the last assistant turn
    reference: str

    @property
    def input_text(self) -> str:
        """The last user message: what a person reads as the row's input."""
        users = [m["content"] for m in self.prompt if m["role"] == "user"]
        return users[-1] if users else ""

    def to_json(self) -> dict:
        return {"where": self.where, "prompt": list(self.prompt), "reference": self.reference}


@dataclass(frozen=True)
class RowSet:
    rows: list[EvalRow]
    source: str  # "eval", "train" or a file path
    description: str  # "37 held-out rows of the run's eval split"


def select_rows(run_dir: Path, cfg: RunConfig, tokenizer, template: Template, source: str = "eval",
                limit: int = 0, seed: int = 0) -> RowSet:
    """The rows `source` names, at most `limit` of them (0: all; a seeded sample when cut)."""
    if source == "eval":
        rows = _split_rows(cfg, tokenizer, template, "eval")
        if not rows:
            raise DataError(
                f"{run_dir.name} has no eval split (data.eval_fraction is 0 and data.eval_path is empty). "
                "Evaluate on a file of held-out rows (--rows FILE), or on a sample of the training rows "
                "(--rows train: a memorisation check). Next time, train with data.eval_fraction=0.1.")
        what = "held-out rows of the run's eval split"
    elif source == "train":
        rows = _split_rows(cfg, tokenizer, template, "train")
        what = "rows the model trained on (a memorisation check)"
    else:
        rows = _file_rows(cfg.data, source)
        what = f"rows of {source}"
    if limit and len(rows) > limit:
        what = f"{what} (a seeded sample of {limit} of {len(rows)})"
        picked = sorted(random.Random(seed).sample(range(len(rows)), limit))
        rows = [rows[i] for i in picked]
    return RowSet(rows, source, f"{len(rows)} {what}")


def _split_rows(cfg: RunConfig, tokenizer, template: Template, split: str) -> list[EvalRow]:
    """The raw rows behind the run's train or eval split, found by where each tokenized row came from."""
    method = method_for(cfg.train.method)
    built = build_dataset(cfg.data, tokenizer, template, cfg.train.max_length, method.shape, method.name)
    _refuse_text(built.format)
    chosen = built.eval if split == "eval" else built.train
    by_where = {row.where: row for row in _raw_rows(cfg.data)}
    wheres = dict.fromkeys(t.where for t in chosen if t.where in by_where)  # a pair unpaired for kto: once
    return [_eval_row(by_where[where], built.format) for where in wheres
            if built.format != "labelled" or label_of(by_where[where])]  # a bad answer is no reference


def _raw_rows(data: DataConfig) -> list[Row]:
    rows = list(load_rows(data).rows)
    if data.eval_path:
        rows += load_rows(data, path=data.eval_path).rows
    return rows


def _file_rows(data: DataConfig, path: str) -> list[EvalRow]:
    """Rows of a data file, read with the run's column mapping and format rules."""
    if not Path(path).exists():
        raise DataError(f"Rows file not found: {path}. Give a data file (jsonl, json, csv, parquet) of the same "
                        "format as the training data, or 'eval' / 'train'.")
    loaded = load_rows(replace(data, path=path, format="auto" if data.format == "auto" else data.format), path=path)
    _refuse_text(loaded.format)
    rows, problems = [], []
    for row in loaded.rows:
        try:
            if loaded.format == "labelled" and not label_of(row):
                continue  # an answer labelled bad is no reference to score against
            rows.append(_eval_row(row, loaded.format))
        except StudioError as exc:
            problems.append(str(exc))
    if not rows:
        raise DataError(f"{path}: no row has a conversation ending in an answer to score"
                        + (f" ({problems[0]})." if problems else "."))
    return rows


def _eval_row(row: Row, fmt: str) -> EvalRow:
    if fmt == "prompts":  # grpo's prompt rows: the reference is their answer, when they have one
        return EvalRow(row.where, tuple(prompt_messages(row)), column_text(row, "answer", ""))
    messages = to_messages(row, fmt)
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return EvalRow(row.where, tuple(messages[:last]), messages[last]["content"])


def _refuse_text(fmt: str) -> None:
    if fmt == "text":
        raise DataError("Raw-text rows have no prompt and reference answer to compare: evaluation needs "
                        "instruction, prompt/completion or conversation rows.")
