"""Detect a dataset's format, and turn its rows into conversations (studio.data.building tokenizes them).

Rows come from studio.data.sources (files, globs, saved folders, hub datasets).
Every row becomes a conversation (a list of {"role", "content"} messages) or a
raw text, then goes through the run's template (studio.data.templates).

A malformed row (bad JSON, a missing column, an unknown role, a row the
template cannot render) is skipped and reported with its file and line; the
summary says how many rows were kept. Loading refuses when nothing is left,
or when more than `data.max_bad_fraction` of the rows are malformed (then the
data or its mapping is wrong, not a row here and there).

    loaded = load_rows(cfg.data)                    # rows, skipped, format
    messages = to_messages(loaded.rows[0], loaded.format)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from studio.config import DataConfig
from studio.errors import DataError
from studio.data.files import Row, Skipped
from studio.data.sources import read_sources
from studio.data.templates import FieldTemplate, is_format_string


@dataclass(frozen=True)
class Loaded:
    """Rows ready for a format, what was skipped on the way, and how much of the data was read."""

    rows: list[Row]
    skipped: list[Skipped]
    format: str
    detected: bool  # the format was detected from the columns (data.format auto)
    columns: list[str]  # the first row's columns as the file names them
    complete: bool  # False: reading stopped at a limit, the rows are the data's beginning
    sources: list[str]
    size: int  # bytes of the local files
    notes: list[str]  # what a person should know about how the files were read


def load_rows(cfg: DataConfig, limit: int | None = None, path: str | None = None) -> Loaded:
    """Read `path` (default data.path), map its columns and find its format; at most `limit` records."""
    read = read_sources(path or cfg.path, cfg.split, cfg.subset, cfg.text_unit, limit, cfg.max_row_chars)
    if not read.rows:
        check_bad_rows(0, read.skipped, cfg.max_bad_fraction)
    rows = map_columns(read.rows, cfg.columns)
    fmt = cfg.format
    if fmt == "auto":
        fmt = "fields" if is_format_string(cfg.template) else detect_format(rows)
    elif fmt == "fields" and not is_format_string(cfg.template):
        raise DataError("data.format=fields reads each row through a format-string template: set data.template to "
                        "one, e.g. 'Summarize:\\n{dialogue}\\nSummary: {summary}'.")
    skipped = list(read.skipped)
    if fmt == "fields":
        rows, bad = _rows_from_fields(rows, cfg.template)
        skipped += bad
        if not rows:
            check_bad_rows(0, skipped, cfg.max_bad_fraction)
    return Loaded(rows, skipped, fmt, cfg.format == "auto", list(read.rows[0].fields), read.complete,
                  read.sources, read.size, read.notes)


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


def summarize(kept: int, skipped: list[Skipped], show: int = 5) -> str:
    """"kept 98 of 100 rows; 2 skipped: a.jsonl:3: not valid JSON (...); ..." (the first `show` named)."""
    text = f"Kept {kept} of {kept + len(skipped)} rows"
    if not skipped:
        return text + "."
    more = f"; and {len(skipped) - show} more" if len(skipped) > show else ""
    return f"{text}; {len(skipped)} skipped: " + "; ".join(map(str, skipped[:show])) + more + "."


def check_bad_rows(kept: int, skipped: list[Skipped], max_fraction: float) -> None:
    """Refuse data with nothing left, or with more malformed rows than data.max_bad_fraction allows."""
    if skipped and max_fraction <= 0:
        raise DataError(f"{skipped[0]} (data.max_bad_fraction is 0: a malformed row stops loading).")
    if not kept:
        raise DataError(f"Nothing left to train on: every row is malformed. {summarize(kept, skipped)}")
    if len(skipped) > max_fraction * (kept + len(skipped)):
        raise DataError(
            f"Too many malformed rows: {len(skipped)} of {kept + len(skipped)}, more than data.max_bad_fraction="
            f"{max_fraction:g} allows. {summarize(kept, skipped)} Fix the data, check data.format and data.columns, "
            "or raise data.max_bad_fraction to train on the rest."
        )


# ---------------------------------------------------------------- formats


def detect_format(rows: list[Row]) -> str:
    """alpaca, preference, labelled, messages, sharegpt, prompt_completion, text or prompts, from the first row's
    columns."""
    columns = set(rows[0].fields)
    if {"instruction", "output"} <= columns:
        return "alpaca"
    if {"chosen", "rejected"} <= columns:
        return "preference"
    if {"prompt", "completion", "label"} <= columns:
        return "labelled"
    if "messages" in columns:
        return "messages"
    if "conversations" in columns:
        return "sharegpt"
    if {"prompt", "completion"} <= columns:
        return "prompt_completion"
    if "text" in columns:
        return "text"
    if "prompt" in columns:
        return "prompts"
    raise DataError(
        f"{rows[0].where}: cannot tell the format from the columns {sorted(columns)}. Expected instruction/output "
        "(Alpaca), prompt/chosen/rejected (preference), prompt/completion/label (labelled), messages, conversations "
        "(ShareGPT), prompt/completion, text, or prompt alone (prompts, for grpo); map yours with data.columns, set "
        "data.format, or write a format-string template with your columns."
    )


SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def to_messages(row: Row, fmt: str) -> list[dict]:
    """A row as a conversation in the OpenAI `messages` shape (for preference pairs: the chosen one)."""
    f = row.fields
    if fmt == "alpaca":
        instruction, extra, output = column_text(row, "instruction"), column_text(row, "input", ""), column_text(row, "output")
        user = f"{instruction}\n\n### Input:\n{extra}" if extra.strip() else instruction
        return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    if fmt in ("prompt_completion", "fields", "labelled"):
        return [{"role": "user", "content": column_text(row, "prompt")}, {"role": "assistant", "content": column_text(row, "completion")}]
    if fmt == "preference":
        return preference_pair(row)[0]
    if fmt in ("messages", "sharegpt"):
        key = "messages" if fmt == "messages" else "conversations"
        return conversation_turns(row, key, f.get(key))
    raise AssertionError(f"to_messages called for format {fmt}")


def preference_pair(row: Row) -> tuple[list[dict], list[dict]]:
    """The chosen and the rejected conversation of a preference row.

    prompt may be a text or a list of messages, or absent when chosen and
    rejected are whole conversations; chosen/rejected are texts or message lists.
    """
    prompt = row.fields.get("prompt")
    if isinstance(prompt, list):
        before = conversation_turns(row, "prompt", prompt, needs_answer=False)
    else:
        before = [{"role": "user", "content": column_text(row, "prompt")}] if prompt is not None else []
    pair = []
    for side in ("chosen", "rejected"):
        value = row.fields.get(side)
        if isinstance(value, list):
            turns = conversation_turns(row, side, value, needs_answer=False)
        else:
            if not before:
                raise DataError(f"{row.where}: {side!r} is a text, so the row needs a 'prompt' column too.")
            turns = [{"role": "assistant", "content": column_text(row, side)}]
        conversation = before + turns
        if conversation[-1]["role"] != "assistant":
            raise DataError(f"{row.where}: the {side} conversation must end with an assistant turn.")
        pair.append(conversation)
    return pair[0], pair[1]


def conversation_turns(row: Row, key: str, turns, needs_answer: bool = True) -> list[dict]:
    """Turns given as {role, content} (OpenAI) or {from, value} (ShareGPT), checked."""
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{row.where}: {key!r} must be a non-empty list of turns.")
    messages = []
    for i, turn in enumerate(turns):
        role_key, content_key = ("from", "value") if isinstance(turn, dict) and "from" in turn else ("role", "content")
        if not isinstance(turn, dict) or not isinstance(turn.get(content_key), str):
            raise DataError(f"{row.where}: turn {i} of {key!r} must be an object with a text {content_key!r}.")
        role = SHAREGPT_ROLES.get(str(turn.get(role_key)))
        if role is None:
            raise DataError(f"{row.where}: turn {i} has unknown role {turn.get(role_key)!r}.")
        messages.append({"role": role, "content": turn[content_key]})
    if needs_answer and not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{row.where}: the conversation has no assistant turn to learn from.")
    return messages


def column_text(row: Row, key: str, default: str | None = None) -> str:
    """The text of a column; `default` stands in for an optional column that is absent or null."""
    value = row.fields.get(key)
    if value is None and default is not None:
        return default
    if key not in row.fields:
        raise DataError(f"{row.where}: missing column {key!r}.")
    if value is None:
        raise DataError(f"{row.where}: column {key!r} is null; it needs text.")
    if isinstance(value, float) and not math.isfinite(value):
        raise DataError(f"{row.where}: column {key!r} is {value}, not text (a missing value in a table?).")
    if not isinstance(value, (str, int, float)):
        raise DataError(f"{row.where}: column {key!r} must be text, got {type(value).__name__}.")
    return str(value)


def _rows_from_fields(rows: list[Row], format_string: str) -> tuple[list[Row], list[Skipped]]:
    """Rows as prompt/completion through a format-string template's fields; rows lacking one are skipped."""
    template = FieldTemplate.parse(format_string)
    out, skipped = [], []
    for row in rows:
        missing = [f for f in template.fields if row.fields.get(f) is None]
        if missing:
            skipped.append(Skipped(row.where, f"the template uses {{{missing[0]}}}, but the row has no "
                                              f"{missing[0]!r} (its columns: {', '.join(map(str, row.fields))}); "
                                              "map one with data.columns"))
            continue
        try:
            values = {f: column_text(row, f) for f in template.fields}
        except DataError as exc:
            skipped.append(as_skipped(row, exc))
            continue
        out.append(Row({"prompt": template.user_text(values), "completion": values[template.response]}, row.where))
    return out, skipped


def as_skipped(row: Row, exc: Exception) -> Skipped:
    """A row's error as a skipped row (its file:line said once)."""
    return Skipped(row.where, str(exc).removeprefix(f"{row.where}: ").rstrip("."))
