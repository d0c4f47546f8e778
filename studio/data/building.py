"""From loaded rows to the tokenized rows a method trains on, split into train and eval.

Each method trains on one shape of row: SEQUENCES (a token sequence with its
trained tokens marked: sft), PAIRS (a prompt with a chosen and a rejected
answer: dpo, orpo), LABELLED (one answer labelled good or bad: kto) or PROMPTS
(a prompt the model answers, with what its rewards read: grpo). The shape says
which data formats it takes, how a row is tokenized, and which columns TRL's
trainer reads.

    built = build_dataset(cfg.data, tokenizer, template, max_length=1024, shape=PAIRS, method="dpo")
    dataset = to_hf_dataset(built.train, PAIRS)
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Callable

from studio.config import DataConfig
from studio.data.formats import as_skipped, check_bad_rows, column_text, load_rows, summarize, to_messages
from studio.data.pairs import LabelledRow, PairRow, tokenize_labelled, tokenize_pair
from studio.data.files import Row, Skipped
from studio.data.prompts import PromptRow, prompt_columns, tokenize_prompt
from studio.data.templates import Template, TokenizedRow, tokenize_conversation, tokenize_text
from studio.errors import DataError, StudioError

PREFERENCE_NOTE = ("Preference pairs: sft trains on the prompt and the chosen response; the rejected responses are "
                   "not used (train.method=dpo, orpo or kto uses both).")


@dataclass(frozen=True)
class RowShape:
    """What one method trains on: which data formats it takes, how a row becomes training rows, which columns."""

    name: str
    formats: tuple[str, ...]
    needs: str  # the data it needs, in words, for the message when the data has another format
    tokenize: Callable[[Row, str, object, Template, str], list]  # (row, format, tokenizer, template, train_on)
    columns: Callable[[list], dict[str, list]]


def _tokenize_sequence(row: Row, fmt: str, tokenizer, template: Template, train_on: str) -> list[TokenizedRow]:
    done = (tokenize_text(tokenizer, column_text(row, "text")) if fmt == "text"
            else tokenize_conversation(tokenizer, template, to_messages(row, fmt), train_on))
    return [replace(done, where=row.where)]


SEQUENCES = RowShape(
    "sequences", ("alpaca", "messages", "sharegpt", "prompt_completion", "preference", "text", "fields"),
    "instruction, chat, prompt/completion or text rows", _tokenize_sequence,
    lambda rows: {"input_ids": [r.input_ids for r in rows],
                  "labels": [[t if on else -100 for t, on in zip(r.input_ids, r.trained)] for r in rows]},
)
PAIRS = RowShape(
    "pairs", ("preference",), "preference pairs (prompt/chosen/rejected columns)",
    lambda row, fmt, tokenizer, template, train_on: [tokenize_pair(row, tokenizer, template)],
    lambda rows: {"prompt_ids": [r.prompt_ids for r in rows], "chosen_ids": [r.chosen_ids for r in rows],
                  "rejected_ids": [r.rejected_ids for r in rows]},
)
LABELLED = RowShape(
    "labelled", ("labelled", "preference"),
    "answers labelled good or bad (prompt/completion/label columns) or preference pairs",
    lambda row, fmt, tokenizer, template, train_on: tokenize_labelled(row, tokenizer, template),
    lambda rows: {"prompt_ids": [r.prompt_ids for r in rows], "completion_ids": [r.completion_ids for r in rows],
                  "label": [r.label for r in rows]},
)

PROMPTS = RowShape(
    "prompts", ("prompts", "alpaca", "messages", "sharegpt", "prompt_completion", "preference", "fields"),
    "prompt rows (a prompt column, and an answer column for answer_match), or instruction, chat, "
    "prompt/completion or preference rows (their response is the answer)",
    lambda row, fmt, tokenizer, template, train_on: [tokenize_prompt(row, fmt, tokenizer, template)],
    prompt_columns,
)

TrainingRow = TokenizedRow | PairRow | LabelledRow | PromptRow


@dataclass(frozen=True)
class BuiltDataset:
    """Tokenized rows for training, with what happened on the way."""

    format: str
    train: list[TrainingRow]
    eval: list[TrainingRow]
    truncated: int
    skipped: list[Skipped]  # malformed rows, left out
    nothing_to_learn: int  # rows dropped: nothing left to learn once cut to max_length
    notes: list[str]  # what a person should know about how the data trains

    @property
    def summary(self) -> str:
        """"Kept 98 of 100 rows; 2 skipped: ..." for the training log."""
        dropped = (f" {self.nothing_to_learn} rows dropped: nothing left to learn once cut to max_length."
                   if self.nothing_to_learn else "")
        return summarize(len(self.train) + len(self.eval) + self.nothing_to_learn, self.skipped) + dropped


def tokenize_rows(rows: list[Row], fmt: str, tokenizer, template: Template, train_on: str,
                  shape: RowShape = SEQUENCES) -> tuple[list[TrainingRow], list[Skipped]]:
    """Every row tokenized; a row that cannot be (malformed, or the template fails on it) is skipped."""
    done, skipped = [], []
    for row in rows:
        try:
            done += shape.tokenize(row, fmt, tokenizer, template, train_on)
        except StudioError as exc:  # DataError for the row, TemplateError for the template on this row
            skipped.append(as_skipped(row, exc))
    return done, skipped


def check_shape(fmt: str, shape: RowShape, method: str, path: str) -> None:
    """Refuse data whose format the method cannot train on, saying what it needs."""
    if fmt in shape.formats:
        return
    if fmt == "labelled":
        raise DataError(f"{path} holds labelled rows (prompt/completion/label): they train with train.method=kto, "
                        f"not {method}.")
    if fmt == "prompts":
        raise DataError(f"{path} holds prompts without responses: they train with train.method=grpo (the model "
                        f"writes the responses and rewards score them), not {method}.")
    raise DataError(f"{path} holds {fmt} rows, but train.method={method} needs {shape.needs}. Pick data of that "
                    "form, map its columns with data.columns, or choose another train.method.")


def build_dataset(cfg: DataConfig, tokenizer, template: Template, max_length: int, shape: RowShape = SEQUENCES,
                  method: str = "sft") -> BuiltDataset:
    """Read, shuffle, tokenize and split; skip malformed rows; refuse data that would teach nothing."""
    loaded = load_rows(cfg)
    check_shape(loaded.format, shape, method, cfg.path)
    rows = list(loaded.rows)
    random.Random(cfg.shuffle_seed).shuffle(rows)
    if cfg.max_samples:
        rows = rows[: cfg.max_samples]
    tokenized, bad = tokenize_rows(rows, loaded.format, tokenizer, template, cfg.train_on, shape)
    skipped = loaded.skipped + bad
    check_bad_rows(len(tokenized), skipped, cfg.max_bad_fraction)
    truncated = sum(r.length > max_length for r in tokenized)
    train = _learnable(tokenized, max_length)
    if not train:
        what = ("every prompt is longer than" if shape is PROMPTS
                else "every row has all its labels masked after cutting to")
        raise DataError(
            f"{cfg.path}: {what} max_length={max_length}: the model would learn nothing. Raise train.max_length "
            "or shorten the prompts."
        )
    dropped = len(tokenized) - len(train)
    if cfg.eval_path:
        evaluation, eval_skipped, eval_dropped = _eval_rows(cfg, loaded.format, tokenizer, template, max_length, shape)
        skipped, dropped = skipped + eval_skipped, dropped + eval_dropped
    else:
        n_eval = int(len(train) * cfg.eval_fraction)
        evaluation, train = train[:n_eval], train[n_eval:]
    notes = loaded.notes + ([PREFERENCE_NOTE] if loaded.format == "preference" and shape is SEQUENCES else [])
    return BuiltDataset(loaded.format, train, evaluation, truncated, skipped, dropped, notes)


def _eval_rows(cfg: DataConfig, fmt: str, tokenizer, template: Template, max_length: int, shape: RowShape):
    """The rows of data.eval_path, tokenized and cut like the training rows: (rows, skipped, dropped)."""
    loaded = load_rows(cfg, path=cfg.eval_path)
    if loaded.format != fmt:
        raise DataError(f"{cfg.eval_path} holds {loaded.format} rows, but the training data is {fmt}: "
                        "give an eval file of the same format.")
    tokenized, bad = tokenize_rows(loaded.rows, fmt, tokenizer, template, cfg.train_on, shape)
    skipped = loaded.skipped + bad
    check_bad_rows(len(tokenized), skipped, cfg.max_bad_fraction)
    rows = _learnable(tokenized, max_length)
    return rows, skipped, len(tokenized) - len(rows)


def _learnable(rows: list[TrainingRow], max_length: int) -> list[TrainingRow]:
    """Rows cut to max_length, without those that have nothing left to learn."""
    return [cut for cut in (r.cut(max_length) for r in rows) if cut is not None]


def to_hf_dataset(rows: list[TrainingRow], shape: RowShape = SEQUENCES):
    """A `datasets.Dataset` of the shape's columns (token ids): TRL trains on it as it is."""
    import hashlib

    from datasets import Dataset
    from datasets.table import InMemoryTable

    columns = shape.columns(rows)
    # Name the data by its content ourselves: `datasets` would otherwise pickle the whole
    # table to hash it, which is slow on big data and fails outright on some Python/pyarrow pairs.
    digest = hashlib.sha256(repr(columns).encode()).hexdigest()[:16]
    return Dataset(InMemoryTable.from_pydict(columns), fingerprint=digest)
