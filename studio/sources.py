"""Read dataset sources into rows: files, several files at once, saved folders, hub datasets.

A source string (`data.path`) is a file, a folder saved by `datasets.save_to_disk`,
a glob pattern, a hub dataset id, or several of these separated by commas.
Reading is lenient and bounded:

- a malformed record (bad JSON, a CSV line with too many values) becomes a
  `Skipped` that names its file and line, and reading goes on; what is wrong
  with the whole file (not UTF-8, empty, not rows at all) is a DataError;
- `limit` stops after that many records, so a preview of a 1 GB file reads
  only its beginning.

    read = read_sources("data/*.jsonl, extra.csv", limit=2000)
    read.rows, read.skipped, read.complete
"""

from __future__ import annotations

import codecs
import csv
import glob
import json
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from studio.errors import DataError
from studio.safety import online_while

SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt")
# How much of a .txt file decides between one document per line and per blank-line block.
TEXT_SNIFF_BYTES = 1 << 20
MAX_JSON_ITEM = 64 << 20  # an item of a JSON array that is still not complete after this is broken
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


def read_sources(path: str, split: str = "train", subset: str = "", text_unit: str = "auto",
                 limit: int | None = None) -> Read:
    """Read every source of `path` in order, at most `limit` records in all."""
    sources = expand_sources(path)
    labels = _labels(sources)
    rows: list[Row] = []
    skipped: list[Skipped] = []
    complete = True
    for source in sources:
        count = 0
        left = None if limit is None else limit - len(rows) - len(skipped)
        for item in _records(source, labels[source], split, subset, text_unit, left):
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
    return Read(rows, skipped, complete, sources, size)


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


def _records(source: str, label: str, split: str, subset: str, text_unit: str, limit: int | None):
    path = Path(source)
    if not path.exists():
        return online_while(_read_hub(source, split, subset, limit))  # a hub id the user named
    if path.is_dir():
        return _read_saved_dataset(path, label, split, limit)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix!r}. Use one of {', '.join(SUFFIXES)}.")
    _refuse_utf16(path, label)
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".tsv": _read_csv,
               ".parquet": _read_parquet, ".txt": lambda p, n: _read_txt(p, n, text_unit)}
    return _decoded(readers[suffix](path, label), label)


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


def _lines(path: Path, label: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line, decoded one by one so an encoding error names its line."""
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if number == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{label}:{number}: not UTF-8 text ({exc.reason} at byte {exc.start} of the line). "
                                "Save the file as UTF-8.") from None


def _read_jsonl(path: Path, label: str) -> Iterator[Row | Skipped]:
    for number, line in _lines(path, label):
        if not line.strip():
            continue
        where = f"{label}:{number}"
        try:
            record = json.loads(line.rstrip("\r\n"))  # so an error at the end names the last column
        except json.JSONDecodeError as exc:
            yield Skipped(where, f"not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        if isinstance(record, dict):
            yield Row(record, where)
        else:
            yield Skipped(where, f"each line must be a JSON object, got {type(record).__name__}")


def _read_json(path: Path, label: str) -> Iterator[Row | Skipped]:
    """A JSON array of objects (read item by item), or an object of equal-length column lists."""
    with path.open(encoding="utf-8-sig") as fh:
        start = fh.read(1 << 16)
        if start.lstrip().startswith("["):
            for i, record in enumerate(iter_json_array(fh, start, label)):
                if isinstance(record, dict):
                    yield Row(record, f"{label}[{i}]")
                else:
                    yield Skipped(f"{label}[{i}]", f"must be an object, got {type(record).__name__}")
            return
        text = start + fh.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{label}:{exc.lineno}: not valid JSON ({exc.msg}).") from None
    if not (isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values())):
        raise DataError(f"{label}: expected a list of objects or an object of equal-length lists, "
                        f"got {type(data).__name__}.")
    lengths = {len(v) for v in data.values()}
    if len(lengths) != 1:
        raise DataError(f"{label}: the columns have different lengths {sorted(lengths)}.")
    for i, values in enumerate(zip(*data.values())):
        yield Row(dict(zip(data, values)), f"{label}[{i}]")


def iter_json_array(fh, start: str, label: str, chunk_size: int = 1 << 20) -> Iterator:
    """The items of the JSON array held by `start` and the rest of `fh`, decoded one at a time.

    Only a chunk or so is in memory, so the first items of a huge file arrive
    at once. A syntax error ends the file: past it, where the next item starts
    cannot be known.
    """
    decoder = json.JSONDecoder()
    buffer, pos = start, start.index("[") + 1
    line = 1 + start.count("\n", 0, pos)

    def more() -> bool:
        nonlocal buffer, pos
        chunk = fh.read(chunk_size)
        if chunk:
            buffer, pos = buffer[pos:] + chunk, 0
        return bool(chunk)

    def fail(message: str, at: int) -> typing.NoReturn:
        raise DataError(f"{label}:{line + buffer.count(chr(10), pos, at)}: not valid JSON ({message}).")

    after_item = False
    while True:
        while True:  # to the next character that is not white space
            while pos < len(buffer) and buffer[pos] in " \t\r\n":
                line += buffer[pos] == "\n"
                pos += 1
            if pos < len(buffer) or not more():
                break
        if pos == len(buffer):
            fail("the array is not closed", pos)
        if buffer[pos] == "]":
            return
        if after_item:
            if buffer[pos] != ",":
                fail("expected ',' or ']' after an item", pos)
            pos, after_item = pos + 1, False
            continue
        while True:
            try:
                item, end = decoder.raw_decode(buffer, pos)
            except json.JSONDecodeError as exc:
                if len(buffer) - pos < MAX_JSON_ITEM and more():
                    continue  # the item may just be cut by the chunk's end
                fail(exc.msg, exc.pos)
            # A number cut by the chunk's end decodes as a shorter one: take an item only where a
            # separator follows it, or at the end of the file.
            if (end < len(buffer) and buffer[end] in " \t\r\n,]") or not more():
                break
        line += buffer.count("\n", pos, end)
        pos, after_item = end, True
        yield item


def _read_csv(path: Path, label: str) -> Iterator[Row | Skipped]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=_delimiter(fh, path))
        try:
            for record in reader:
                # reader.line_num is the physical line where a record ends (records may span lines).
                where = f"{label}:{reader.line_num}"
                columns = len(reader.fieldnames)
                if None in record:
                    yield Skipped(where, f"{columns + len(record[None])} values, but the header names {columns} "
                                         "columns (quote values that contain the delimiter)")
                elif None in record.values():
                    given = sum(v is not None for v in record.values())
                    yield Skipped(where, f"{given} values, but the header names {columns} columns")
                else:
                    yield Row(dict(record), where)
        except csv.Error as exc:
            raise DataError(f"{label}:{reader.line_num}: not valid CSV ({exc}).") from None


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


def _read_parquet(path: Path, label: str) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
        i = 0
        for batch in batches:  # a batch at a time: nested columns come back as lists and dicts
            for record in batch.to_pylist():
                yield Row(record, f"{label}[{i}]")
                i += 1
    except pa.ArrowException as exc:
        raise DataError(f"{label}: not a readable Parquet file ({exc}).") from None


def _read_txt(path: Path, label: str, text_unit: str) -> Iterator[Row]:
    """One document per line, or per block of lines between blank lines."""
    if text_unit == "auto":
        text_unit = "block" if _has_blank_line_between_text(path) else "line"
    block: list[str] = []
    first = 0
    for number, line in _lines(path, label):
        text = line.rstrip("\r\n")
        if text_unit == "line":
            if text.strip():
                yield Row({"text": text}, f"{label}:{number}")
        elif text.strip():
            first = first or number
            block.append(text)
        elif block:
            yield Row({"text": "\n".join(block)}, f"{label}:{first}")
            block, first = [], 0
    if block:
        yield Row({"text": "\n".join(block)}, f"{label}:{first}")


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
