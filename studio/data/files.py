"""Readers of one local data file, by type: JSON Lines, JSON, CSV/TSV, Parquet, plain text.

Each reader yields a `Row` per record, or a `Skipped` naming the file and line
of a malformed one and why; what is wrong with the whole file (not UTF-8, not
rows at all) is a DataError. Records over `max_row_chars` are measured and
skipped without being held (studio.data.bounded).

    for item in read_file(Path("data.jsonl"), "data.jsonl", text_unit="auto", max_chars=1_000_000):
        ...   # Row(fields, "data.jsonl:3") or Skipped("data.jsonl:4", "not valid JSON ...")
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from studio.data.bounded import (TOO_DEEP, BadRecord, BoundedTextLines, LineTooLong, bounded_lines, iter_json_array,
                                 parse_json, refuse_constant, too_long)
from studio.errors import DataError

SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt")
# How much of a .txt file decides between one document per line and per blank-line block.
TEXT_SNIFF_BYTES = 1 << 20


@dataclass(frozen=True)
class Row:
    """One record and where it came from ("data.jsonl:12"), for error messages."""

    fields: dict
    where: str


@dataclass(frozen=True)
class Skipped:
    """A malformed record that was left out, and why."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


def read_file(path: Path, label: str, text_unit: str, max_chars: int) -> Iterator[Row | Skipped]:
    """The records of one local file, read by its type; rows name themselves after `label` ("data.jsonl:12")."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix!r}. Use one of {', '.join(SUFFIXES)}.")
    _refuse_utf16(path, label)
    if suffix == ".txt":
        return _decoded(_read_txt(path, label, text_unit, max_chars), label)
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".tsv": _read_csv,
               ".parquet": _read_parquet}
    return _decoded(readers[suffix](path, label, max_chars), label)


def _decoded(records: Iterator, label: str) -> Iterator:
    """The records, with a decoding error of text read as a stream turned into a named error."""
    try:
        yield from records
    except UnicodeDecodeError as exc:
        raise DataError(f"{label}: not UTF-8 text ({exc.reason}). Save the file as UTF-8.") from None


def _refuse_utf16(path: Path, label: str) -> None:
    with path.open("rb") as fh:
        start = fh.read(2)
    if start in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        raise DataError(f"{label} is UTF-16 text (as Windows saves \"Unicode\"). Save it as UTF-8.")


def _read_jsonl(path: Path, label: str, max_chars: int) -> Iterator[Row | Skipped]:
    for number, line in bounded_lines(path, label, max_chars):
        where = f"{label}:{number}"
        if isinstance(line, BadRecord):
            yield Skipped(where, line.reason)
            continue
        if not line.strip():
            continue
        record = parse_json(line.rstrip("\r\n"))  # so an error at the end names the last column
        if isinstance(record, BadRecord):
            yield Skipped(where, record.reason)
        elif isinstance(record, dict):
            yield Row(record, where)
        else:
            yield Skipped(where, f"each line must be a JSON object, got {type(record).__name__}")


def _read_json(path: Path, label: str, max_chars: int) -> Iterator[Row | Skipped]:
    """A JSON array of objects (read item by item), or an object of equal-length column lists."""
    with path.open(encoding="utf-8-sig") as fh:
        start = fh.read(1 << 16)
        if start.lstrip().startswith("["):
            for i, record in enumerate(iter_json_array(fh, start, label, max_chars=max_chars)):
                if isinstance(record, BadRecord):
                    yield Skipped(f"{label}[{i}]", record.reason)
                elif isinstance(record, dict):
                    yield Row(record, f"{label}[{i}]")
                else:
                    yield Skipped(f"{label}[{i}]", f"must be an object, got {type(record).__name__}")
            return
        text = start + fh.read()
    data = _parse_json_columns(text, label)
    lengths = {len(v) for v in data.values()}
    if len(lengths) != 1:
        raise DataError(f"{label}: the columns have different lengths {sorted(lengths)}.")
    for i, values in enumerate(zip(*data.values())):
        yield Row(dict(zip(data, values)), f"{label}[{i}]")


def _parse_json_columns(text: str, label: str) -> dict[str, list]:
    """A JSON document that is not an array: it must be an object of column lists."""
    try:
        data = json.loads(text, parse_constant=refuse_constant)
    except json.JSONDecodeError as exc:
        raise DataError(f"{label}:{exc.lineno}: not valid JSON ({exc.msg}).") from None
    except RecursionError:
        raise DataError(f"{label}: {TOO_DEEP.reason}.") from None
    except ValueError as exc:  # NaN, Infinity, an integer of thousands of digits
        raise DataError(f"{label}: {exc}.") from None
    if not (isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values())):
        raise DataError(f"{label}: expected a list of objects or an object of equal-length lists, "
                        f"got {type(data).__name__}.")
    return data


def _read_csv(path: Path, label: str, max_chars: int) -> Iterator[Row | Skipped]:
    csv.field_size_limit(max_chars)  # process-wide, and the same for every reader: no value is longer than a row
    with path.open(encoding="utf-8-sig", newline="") as fh:
        delimiter = _delimiter(fh, path)
        lines = BoundedTextLines(fh, max_chars)
        reader = csv.DictReader(lines, delimiter=delimiter)
        try:
            columns = len(reader.fieldnames or ())
        except LineTooLong as exc:
            raise DataError(f"{label}:1: the header line has {exc.chars:,} characters, over data.max_row_chars="
                            f"{max_chars:,}. Is this a CSV file?") from None
        while True:
            try:
                record = next(reader)
            except StopIteration:
                return
            except LineTooLong as exc:
                yield Skipped(f"{label}:{lines.number}", too_long(exc.chars, max_chars).reason)
                continue
            except csv.Error as exc:
                if "field limit" not in str(exc):
                    raise DataError(f"{label}:{lines.number}: not valid CSV ({exc}).") from None
                lines.skip_rest_of_record()
                yield Skipped(f"{label}:{lines.number}", f"a value is over data.max_row_chars={max_chars:,} characters")
                continue
            # lines.number is the physical line where a record ends (records may span lines).
            yield _csv_row(record, columns, f"{label}:{lines.number}")


def _csv_row(record: dict, columns: int, where: str) -> Row | Skipped:
    if None in record:
        return Skipped(where, f"{columns + len(record[None])} values, but the header names {columns} "
                              "columns (quote values that contain the delimiter)")
    if None in record.values():
        given = sum(v is not None for v in record.values())
        return Skipped(where, f"{given} values, but the header names {columns} columns")
    return Row(dict(record), where)


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


def _read_parquet(path: Path, label: str, max_chars: int) -> Iterator[Row | Skipped]:
    """Rows a small batch at a time; a row with too much text is measured in Arrow and never converted."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        i = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=64):
            sizes = _text_chars(batch)
            kept = iter(batch.filter(pa.array([n <= max_chars for n in sizes])).to_pylist())
            for chars in sizes:  # nested columns come back as lists and dicts
                where = f"{label}[{i}]"
                too_much = chars > max_chars
                yield Skipped(where, too_long(chars, max_chars).reason) if too_much else Row(next(kept), where)
                i += 1
    except pa.ArrowException as exc:
        raise DataError(f"{label}: not a readable Parquet file ({exc}).") from None


def _text_chars(batch) -> list[int]:
    """Characters in the text columns of each row of an Arrow batch (nested columns are measured once read)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    total = [0] * batch.num_rows
    for column in batch.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            total = [a + b for a, b in zip(total, pc.utf8_length(column).fill_null(0).to_pylist())]
    return total


def _read_txt(path: Path, label: str, text_unit: str, max_chars: int) -> Iterator[Row | Skipped]:
    """One document per line, or per block of lines between blank lines."""
    if text_unit == "auto":
        text_unit = "block" if _has_blank_line_between_text(path) else "line"
    lines = bounded_lines(path, label, max_chars)
    if text_unit == "block":
        yield from _txt_blocks(lines, label, max_chars)
        return
    for number, line in lines:
        if isinstance(line, BadRecord):
            yield Skipped(f"{label}:{number}", line.reason)
        elif line.strip():
            yield Row({"text": line.rstrip("\r\n")}, f"{label}:{number}")


def _txt_blocks(lines, label: str, max_chars: int) -> Iterator[Row | Skipped]:
    """Blocks of lines between blank lines; a block over max_chars is measured to its end but not kept."""
    block: list[str] = []
    first, chars = 0, -1  # -1: n lines are joined by n - 1 new lines

    def done() -> Row | Skipped:
        where = f"{label}:{first}"
        return Row({"text": "\n".join(block)}, where) if chars <= max_chars else Skipped(where, too_long(
            chars, max_chars).reason)

    for number, line in lines:
        bad = isinstance(line, BadRecord)
        text = "" if bad else line.rstrip("\r\n")
        if bad or text.strip():
            first = first or number
            chars += 1 + (line.chars if bad else len(text))
            if chars <= max_chars:
                block.append(text)
        elif first:
            yield done()
            block, first, chars = [], 0, -1
    if first:
        yield done()


def jsonl_note(source: str, label: str) -> str | None:
    """A note when a .txt file's first line is a JSON object: it is likely JSON Lines under the wrong name."""
    path = Path(source)
    if path.suffix.lower() != ".txt" or not path.is_file():
        return None
    with path.open("rb") as fh:
        first = next((line for line in iter(lambda: fh.readline(TEXT_SNIFF_BYTES), b"") if line.strip()), b"")
    try:
        is_object = isinstance(json.loads(first), dict)
    except (ValueError, RecursionError):
        return None
    return (f"{label} looks like JSON Lines (its first line is a JSON object), but a .txt file is read as plain "
            "text: each line becomes one text row, braces and all. Rename it to .jsonl to read its columns.") \
        if is_object else None


def _has_blank_line_between_text(path: Path) -> bool:
    with path.open("rb") as fh:
        start = fh.read(TEXT_SNIFF_BYTES)
    return re.search(rb"\S[ \t]*\r?\n[ \t]*\r?\n\s*\S", start) is not None
