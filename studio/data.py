"""Load a dataset file, detect its format, and turn rows into trainable token ids.

Every row becomes a conversation (a list of {"role", "content"} messages) or a
raw text, then goes through the run's template (studio.templates). A malformed
row is an error that names the file and line.

    rows = read_rows("assets/sample_instructions.jsonl")
    built = build_dataset(cfg.data, tokenizer, template, max_length=1024)
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from studio.config import DataConfig
from studio.errors import DataError
from studio.templates import Template, TokenizedRow, tokenize_conversation, tokenize_text

SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt")


@dataclass(frozen=True)
class Row:
    """One record and where it came from ("data.jsonl:12"), for error messages."""

    fields: dict
    where: str


def read_rows(path: str | Path) -> list[Row]:
    """Read every record of a jsonl/json/csv/tsv/parquet/txt file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"Dataset not found: {path}. Give the path of a {', '.join(SUFFIXES)} file.")
    if path.is_dir():
        return _read_saved_dataset(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix!r}. Use one of {', '.join(SUFFIXES)}.")
    try:
        reader = {
            ".jsonl": _read_jsonl,
            ".json": _read_json,
            ".csv": _read_csv,
            ".tsv": _read_csv,
            ".parquet": _read_parquet,
            ".txt": _read_txt,
        }[suffix]
        rows = reader(path)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}). Save the file as UTF-8.") from None
    if not rows:
        raise DataError(f"{path} holds no rows.")
    return rows


def _read_jsonl(path: Path) -> list[Row]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path.name}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}).") from None
            if not isinstance(record, dict):
                raise DataError(f"{where}: each line must be a JSON object, got {type(record).__name__}.")
            rows.append(Row(record, where))
    return rows


def _read_json(path: Path) -> list[Row]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path.name}:{exc.lineno}: not valid JSON ({exc.msg}).") from None
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        lengths = {len(v) for v in data.values()}
        if len(lengths) != 1:
            raise DataError(f"{path.name}: the columns have different lengths {sorted(lengths)}.")
        data = [dict(zip(data, values)) for values in zip(*data.values())]
    if not isinstance(data, list):
        raise DataError(f"{path.name}: expected a list of objects or an object of equal-length lists.")
    rows = []
    for i, record in enumerate(data):
        if not isinstance(record, dict):
            raise DataError(f"{path.name}: item {i} must be an object, got {type(record).__name__}.")
        rows.append(Row(record, f"{path.name}[{i}]"))
    return rows


def _read_csv(path: Path) -> list[Row]:
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=_delimiter(fh, path))
        rows = []
        try:
            for record in reader:
                # reader.line_num is the physical line where a record ends (records may span lines).
                where = f"{path.name}:{reader.line_num}"
                if None in record:
                    raise DataError(f"{where}: {len(record) - 1 + len(record[None])} values, but the header names "
                                    f"{len(reader.fieldnames)} columns. Quote values that contain the delimiter.")
                rows.append(Row(dict(record), where))
        except csv.Error as exc:
            raise DataError(f"{path.name}:{reader.line_num}: not valid CSV ({exc}).") from None
        return rows


def _delimiter(fh, path: Path) -> str:
    """The delimiter, guessed from the start of the file; quoting always follows the usual CSV rules.

    (csv.Sniffer also guesses quoting, and on small samples it guesses wrong: a
    value of one double quote then reads back as two.)
    """
    sample = fh.read(64 * 1024)
    fh.seek(0)
    header = sample.splitlines()[0] if sample else ""
    default = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        sniffed = csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        sniffed = default
    return next((d for d in (sniffed, default, ",", "\t", ";", "|") if d in header), default)


def _read_saved_dataset(path: Path) -> list[Row]:
    """A folder written by `datasets.save_to_disk` (a DatasetDict: its "train" split)."""
    from datasets import DatasetDict, load_from_disk

    try:
        data = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"{path} is a folder but not a saved dataset ({exc}). Give a file, or a folder from "
                        "datasets' save_to_disk.") from None
    if isinstance(data, DatasetDict):
        split = "train" if "train" in data else next(iter(data))
        data = data[split]
    rows = [Row(record, f"{path.name}[{i}]") for i, record in enumerate(data)]
    if not rows:
        raise DataError(f"{path} holds no rows.")
    return rows


def _read_parquet(path: Path) -> list[Row]:
    import pandas as pd

    frame = pd.read_parquet(path)
    return [Row(record, f"{path.name}[{i}]") for i, record in enumerate(frame.to_dict(orient="records"))]


def _read_txt(path: Path) -> list[Row]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if line.strip():
                rows.append(Row({"text": line.rstrip("\n")}, f"{path.name}:{number}"))
    return rows


def map_columns(rows: list[Row], mapping: dict[str, str]) -> list[Row]:
    """Rename file columns to the names a format expects ({"instruction": "Question Text"})."""
    if not mapping:
        return rows
    present = set(rows[0].fields)
    missing = [source for source in mapping.values() if source not in present]
    if missing:
        raise DataError(f"{rows[0].where}: data.columns maps from {missing[0]!r}, but the file has no such column. "
                        f"Its columns are: {', '.join(sorted(present))}.")
    return [Row({**r.fields, **{target: r.fields.get(source) for target, source in mapping.items()}}, r.where)
            for r in rows]


def load_rows(cfg: DataConfig) -> tuple[list[Row], str]:
    """Rows with the column mapping applied, and their format (detected unless set)."""
    rows = map_columns(read_rows(cfg.path), cfg.columns)
    return rows, detect_format(rows) if cfg.format == "auto" else cfg.format


# ---------------------------------------------------------------- formats


def detect_format(rows: list[Row]) -> str:
    """alpaca, messages, sharegpt, prompt_completion or text, from the first row's columns."""
    columns = set(rows[0].fields)
    if {"instruction", "output"} <= columns:
        return "alpaca"
    if "messages" in columns:
        return "messages"
    if "conversations" in columns:
        return "sharegpt"
    if {"prompt", "completion"} <= columns:
        return "prompt_completion"
    if "text" in columns:
        return "text"
    raise DataError(
        f"{rows[0].where}: cannot tell the format from the columns {sorted(columns)}. Expected instruction/output "
        "(Alpaca), messages, conversations (ShareGPT), prompt/completion or text; or set data.format."
    )


SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def to_messages(row: Row, fmt: str) -> list[dict]:
    """A row as a conversation in the OpenAI `messages` shape."""
    f = row.fields
    if fmt == "alpaca":
        instruction, extra, output = _text(row, "instruction"), _text(row, "input", ""), _text(row, "output")
        user = f"{instruction}\n\n### Input:\n{extra}" if extra.strip() else instruction
        return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    if fmt == "prompt_completion":
        return [{"role": "user", "content": _text(row, "prompt")}, {"role": "assistant", "content": _text(row, "completion")}]
    if fmt in ("messages", "sharegpt"):
        key, role_key, content_key = ("messages", "role", "content") if fmt == "messages" else ("conversations", "from", "value")
        turns = f.get(key)
        if not isinstance(turns, list) or not turns:
            raise DataError(f"{row.where}: {key!r} must be a non-empty list of turns.")
        messages = []
        for i, turn in enumerate(turns):
            if not isinstance(turn, dict) or not isinstance(turn.get(content_key), str):
                raise DataError(f"{row.where}: turn {i} must be an object with a text {content_key!r}.")
            role = SHAREGPT_ROLES.get(str(turn.get(role_key)))
            if role is None:
                raise DataError(f"{row.where}: turn {i} has unknown role {turn.get(role_key)!r}.")
            messages.append({"role": role, "content": turn[content_key]})
        if not any(m["role"] == "assistant" for m in messages):
            raise DataError(f"{row.where}: the conversation has no assistant turn to learn from.")
        return messages
    raise AssertionError(f"to_messages called for format {fmt}")


def _text(row: Row, key: str, default: str | None = None) -> str:
    value = row.fields.get(key, default)
    if value is None:
        raise DataError(f"{row.where}: missing column {key!r}.")
    if not isinstance(value, (str, int, float)):
        raise DataError(f"{row.where}: column {key!r} must be text, got {type(value).__name__}.")
    return str(value)


# ---------------------------------------------------------------- building


@dataclass(frozen=True)
class BuiltDataset:
    """Tokenized rows for training, with what happened on the way."""

    format: str
    train: list[TokenizedRow]
    eval: list[TokenizedRow]
    truncated: int


def tokenize_row(row: Row, fmt: str, tokenizer, template: Template, train_on: str) -> TokenizedRow:
    if fmt == "text":
        return tokenize_text(tokenizer, _text(row, "text"))
    return tokenize_conversation(tokenizer, template, to_messages(row, fmt), train_on)


def build_dataset(cfg: DataConfig, tokenizer, template: Template, max_length: int) -> BuiltDataset:
    """Read, shuffle, tokenize and split; refuse data that would teach nothing."""
    import random

    rows, fmt = load_rows(cfg)
    random.Random(cfg.shuffle_seed).shuffle(rows)
    if cfg.max_samples:
        rows = rows[: cfg.max_samples]
    tokenized = [tokenize_row(row, fmt, tokenizer, template, cfg.train_on) for row in rows]
    truncated = sum(len(t.input_ids) > max_length for t in tokenized)
    tokenized = [_truncate(t, max_length) for t in tokenized]
    kept = [t for t in tokenized if any(t.trained[1:])]
    if not kept:
        raise DataError(
            f"{cfg.path}: every row has all its labels masked after cutting to max_length={max_length}: "
            "the model would learn nothing. Raise train.max_length or shorten the prompts."
        )
    n_eval = int(len(kept) * cfg.eval_fraction)
    return BuiltDataset(format=fmt, train=kept[n_eval:], eval=kept[:n_eval], truncated=truncated)


def _truncate(row: TokenizedRow, max_length: int) -> TokenizedRow:
    if len(row.input_ids) <= max_length:
        return row
    return TokenizedRow(row.text, row.input_ids[:max_length], row.trained[:max_length])


def to_hf_dataset(rows: list[TokenizedRow]):
    """A `datasets.Dataset` with input_ids and labels (-100 where masked): TRL trains on it as it is."""
    import hashlib

    from datasets import Dataset
    from datasets.table import InMemoryTable

    columns = {
        "input_ids": [r.input_ids for r in rows],
        "labels": [[tok if on else -100 for tok, on in zip(r.input_ids, r.trained)] for r in rows],
    }
    # Name the data by its content ourselves: `datasets` would otherwise pickle the whole
    # table to hash it, which is slow on big data and fails outright on some Python/pyarrow pairs.
    digest = hashlib.sha256(repr(columns).encode()).hexdigest()[:16]
    return Dataset(InMemoryTable.from_pydict(columns), fingerprint=digest)
