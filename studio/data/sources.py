"""Read dataset sources into rows: files, several files at once, saved folders, hub datasets.

A source string (`data.path`) is a file, a folder saved by `datasets.save_to_disk`,
a glob pattern, a hub dataset id, or several of these separated by commas.
Reading is lenient and bounded:

- a malformed record (bad JSON, a CSV line with too many values) becomes a
  `Skipped` that names its file and line, and reading goes on; what is wrong
  with the whole file (not UTF-8, empty, not rows at all) is a DataError;
- so does a record over `max_row_chars` characters, nested too deeply or
  holding NaN: it is measured and skipped without being held (studio.data.bounded);
- `limit` stops after that many records, so a preview of a 1 GB file reads
  only its beginning.

    read = read_sources("data/*.jsonl, extra.csv", limit=2000)
    read.rows, read.skipped, read.complete, read.notes
"""

from __future__ import annotations

import codecs
import csv
import glob
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from studio.data.bounded import (TOO_DEEP, BadRecord, BoundedTextLines, LineTooLong, bounded_lines, iter_json_array,
                            parse_json, record_problem, refuse_constant, too_long)
from studio.config import DataConfig
from studio.errors import DataError
from studio.safety import online_while

SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt")
# How much of a .txt file decides between one document per line and per blank-line block.
TEXT_SNIFF_BYTES = 1 << 20
MAX_ROW_CHARS = DataConfig.max_row_chars
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


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


@dataclass(frozen=True)
class Read:
    """What reading the sources gave: rows, skipped records, and whether everything was read."""

    rows: list[Row]
    skipped: list[Skipped]
    complete: bool  # False when reading stopped at the limit: the rows are the beginning of the data
    sources: list[str]  # the files, folders and hub ids read (globs expanded)
    size: int  # bytes of the local files named, read or not (0 for hub datasets)
    notes: list[str]  # what a person should know about how the files were read


def read_sources(path: str, split: str = "train", subset: str = "", text_unit: str = "auto",
                 limit: int | None = None, max_row_chars: int = MAX_ROW_CHARS) -> Read:
    """Read every source of `path` in order, at most `limit` records in all."""
    sources = expand_sources(path)
    labels = _labels(sources)
    rows: list[Row] = []
    skipped: list[Skipped] = []
    complete = True
    for source in sources:
        count = 0
        left = None if limit is None else limit - len(rows) - len(skipped)
        for item in _records(source, labels[source], split, subset, text_unit, left, max_row_chars):
            if isinstance(item, Row) and (problem := record_problem(item.fields, max_row_chars)):
                item = Skipped(item.where, problem.reason)
            (rows if isinstance(item, Row) else skipped).append(item)
            count += 1
            if limit is not None and len(rows) + len(skipped) >= limit:
                complete = False
                break
        if count == 0:
            raise DataError(f"{source} holds no rows.")
        if not complete:
            break
    size = sum(Path(s).stat().st_size for s in sources if Path(s).is_file())
    notes = [note for s in sources if (note := _looks_like_jsonl(s, labels[s]))]
    return Read(rows, skipped, complete, sources, size, notes)


def read_rows(path: str | Path) -> list[Row]:
    """Every row of `path`, strictly: the first malformed record is a DataError naming its place."""
    read = read_sources(str(path))
    if read.skipped:
        raise DataError(str(read.skipped[0]))
    return read.rows


def expand_sources(path: str) -> list[str]:
    """The sources named by `path`: comma-separated parts, globs expanded (sorted), each checked."""
    path = str(path).strip()
    if not path:
        raise DataError("No dataset chosen. Set data.path to a file, a folder, a glob or a hub dataset id.")
    # A path that exists is taken whole, even when its name holds a comma.
    parts = [path] if Path(path).exists() else [p.strip() for p in path.split(",") if p.strip()]
    sources = []
    for part in parts:
        if any(c in part for c in "*?[") and not Path(part).exists():
            matches = sorted(glob.glob(part, recursive=True))
            if not matches:
                raise DataError(f"No file matches {part!r}.")
            sources += matches
        elif Path(part).exists() or _is_hub_id(part):
            sources.append(part)
        else:
            raise DataError(f"Dataset not found: {part}. Give the path of a {', '.join(SUFFIXES)} file, a folder "
                            "saved by datasets, a glob, or a hub dataset id.")
    return sources


def _is_hub_id(text: str) -> bool:
    return bool(HUB_ID.match(text)) and not text.lower().endswith(SUFFIXES)


def _labels(sources: list[str]) -> dict[str, str]:
    """How rows name their source: the file name, or the path where two sources share a name."""
    names = [Path(s).name for s in sources]
    return {s: (n if names.count(n) == 1 else s) for s, n in zip(sources, names)}


def _records(source: str, label: str, split: str, subset: str, text_unit: str, limit: int | None,
             max_chars: int) -> Iterator[Row | Skipped]:
    path = Path(source)
    if not path.exists():
        return online_while(_read_hub(source, split, subset, limit))  # a hub id the user named
    if path.is_dir():
        return _read_saved_dataset(path, label, split, limit)
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


def _looks_like_jsonl(source: str, label: str) -> str | None:
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


def _read_saved_dataset(path: Path, label: str, split: str, limit: int | None) -> Iterator[Row]:
    """A folder written by `datasets.save_to_disk` (of a DatasetDict: the chosen split)."""
    from datasets import DatasetDict, load_from_disk

    try:
        data = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"{path} is a folder but not a saved dataset ({exc}). Give a file, or a folder from "
                        "datasets' save_to_disk.") from None
    if isinstance(data, DatasetDict):
        data = data[_pick_split(str(path), split, list(data))]
    if limit is not None:
        data = data.select(range(min(limit, len(data))))
    return (Row(record, f"{label}[{i}]") for i, record in enumerate(data))


def _pick_split(name: str, split: str, splits: list[str]) -> str:
    if split in splits:
        return split
    if split == "train":  # the default: a dataset without a train split still opens
        return splits[0]
    raise DataError(f"{name} has no split {split!r}; its splits are: {', '.join(splits)}. Set data.split.")


def _read_hub(dataset_id: str, split: str, subset: str, limit: int | None) -> Iterator[Row]:
    """A dataset from the Hugging Face hub; a bounded read streams only its first rows."""
    from datasets import load_dataset

    described = f"{dataset_id!r}" + (f" (subset {subset!r})" if subset else "") + f", split {split!r}"
    try:
        data = load_dataset(dataset_id, subset or None, split=split, streaming=limit is not None)
    except ConnectionError as exc:
        raise DataError(f"Hub dataset {described} cannot be loaded: the hub is unreachable from here ({exc}). "
                        f"If {dataset_id!r} was meant as a local file or folder, it does not exist. Otherwise "
                        "download the dataset where there is a network (datasets' save_to_disk) and give "
                        "that folder, or a local file.") from None
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"Hub dataset {described} cannot be loaded: {exc}. Check the id, data.subset and "
                        "data.split.") from None
    for i, record in enumerate(data):
        if limit is not None and i >= limit:
            return
        yield Row(record, f"{dataset_id}[{i}]")
