"""Read dataset sources into rows: files, several files at once, saved folders, hub datasets.

A source string (`data.path`) is a file, a folder saved by `datasets.save_to_disk`,
a glob pattern, a hub dataset id, or several of these separated by commas.
Reading is lenient and bounded (each file type's reader is in studio.data.files):

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

import glob
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from studio.config import DataConfig
from studio.data.bounded import record_problem
from studio.data.files import SUFFIXES, Row, Skipped, jsonl_note, read_file
from studio.errors import DataError
from studio.safety import online_while

MAX_ROW_CHARS = DataConfig.max_row_chars
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


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
    notes = [note for s in sources if (note := jsonl_note(s, labels[s]))]
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
            where = "" if Path(part).is_absolute() else f" (a relative path is read from {Path.cwd()}, the folder " \
                                                         "the studio was started in)"
            raise DataError(f"Dataset not found: {part}{where}. Give the path of a {', '.join(SUFFIXES)} file, a "
                            "folder saved by datasets, a glob, or a hub dataset id.")
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
    return read_file(path, label, text_unit, max_chars)


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
