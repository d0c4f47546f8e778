"""Rows that could take the reader down: a 50 MB row, 100,000-deep nesting, NaN, nulls. Each is a named bad row,
read in bounded time and memory, and the rows around it are kept."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from studio.data.bounded import MAX_NESTING, BadRecord, iter_json_array
from studio.config import DataConfig
from studio.data.formats import load_rows
from studio.errors import DataError
from studio.data.sources import read_sources

ROOT = Path(__file__).resolve().parent.parent
HUGE = 50 * 2**20  # characters in the huge row
DEEP = 100_000  # levels of the deeply nested row
NORMAL = [{"instruction": f"What is {i} plus {i}?", "input": "", "output": f"It is {2 * i}."} for i in range(6)]


def huge_and_deep_file(folder: Path, kind: str) -> Path:
    """Normal rows with a 50 MB row and a 100,000-deep row among them (rows 3 and 4), written as `kind`."""
    huge = json.dumps({"instruction": "x" * HUGE, "input": "", "output": "y"})
    deep = '{"instruction": ' + '{"a": ' * DEEP + "1" + "}" * DEEP + ', "output": "z"}'
    normal = [json.dumps(r) for r in NORMAL]
    path = folder / f"data.{kind}"
    if kind == "jsonl":
        path.write_text("\n".join(normal[:2] + [huge, deep] + normal[2:]) + "\n")
    elif kind == "json":
        path.write_text("[" + ",\n".join(normal[:2] + [huge, deep] + normal[2:]) + "]")
    elif kind == "csv":
        rows = [f"{r['instruction']},{r['input']},{r['output']}" for r in NORMAL]
        # The huge value is quoted and spans lines: the whole record is skipped, not read as rows.
        big = '"' + "x" * (HUGE // 2) + "\n" + "x" * (HUGE // 2) + '",,y'
        path.write_text("\n".join(["instruction,input,output", *rows[:2], big, *rows[2:]]) + "\n")
    else:
        path.write_text("\n".join(["first", "second", "x" * HUGE, "third"]) + "\n")
    return path


READ_IN_A_CHILD = """
import json, resource, sys, time, tracemalloc
from studio.data.sources import read_sources
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
start = time.perf_counter()
read = read_sources(sys.argv[1])
seconds, (_, peak) = time.perf_counter() - start, tracemalloc.get_traced_memory()
print(json.dumps({"seconds": seconds, "kept": len(read.rows), "skipped": [str(s) for s in read.skipped],
                  "peak_mb": peak / 2**20,
                  "rss_grew_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}))
"""


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv", "txt"])
def test_a_50_mb_row_and_deep_nesting_are_skipped_in_bounded_time_and_memory(tmp_path, kind):
    path = huge_and_deep_file(tmp_path, kind)
    # A child process, so its peak memory is the reading's alone, not this file's writing: Python's
    # allocations (tracemalloc's peak) and the process's resident memory.
    done = subprocess.run([sys.executable, "-c", READ_IN_A_CHILD, str(path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["seconds"] < 20, out
    assert out["peak_mb"] < 16 and out["rss_grew_mb"] < 32, f"reading a {HUGE / 2**20:.0f} MB row: {out}"
    too_long = f"row of {HUGE:,} characters" if kind == "txt" else "characters is over data.max_row_chars=1,000,000"
    assert too_long in out["skipped"][0], out["skipped"]
    if kind in ("jsonl", "json"):
        assert out["kept"] == 6 and len(out["skipped"]) == 2
        assert out["skipped"][0].startswith("data.jsonl:3: row of" if kind == "jsonl" else "data.json[2]: row of")
        assert f"nested more than {MAX_NESTING} levels deep" in out["skipped"][1]
    else:
        assert out["kept"] == (6 if kind == "csv" else 3) and len(out["skipped"]) == 1, out


def test_the_preview_names_both_rows_and_keeps_the_others(tmp_path, tiny_llama):
    from transformers import AutoTokenizer

    from studio.data.preview import preview_dataset
    from studio.data.templates import resolve_template

    path = huge_and_deep_file(tmp_path, "jsonl")
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    start = time.perf_counter()
    p = preview_dataset(DataConfig(path=str(path)), tok, resolve_template("alpaca", tok), 128, row=2)
    assert time.perf_counter() - start < 20
    assert p.count_line == "Kept 6 of 8 rows (2 skipped)"
    assert [s.where for s in p.skipped] == ["data.jsonl:3", "data.jsonl:4"]
    assert "What is 2 plus 2?" in p.text, "row 2 is the third row kept"


def test_the_limit_is_data_max_row_chars(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "a" * 500}) + "\n" + json.dumps({"text": "é" * 80}, ensure_ascii=False) + "\n")
    read = read_sources(str(path), max_row_chars=100)
    assert [r.fields["text"] for r in read.rows] == ["é" * 80], "characters are counted, not bytes"
    assert str(read.skipped[0]) == ("d.jsonl:1: row of 512 characters is over data.max_row_chars=100 "
                                    "(raise it to keep such rows)")
    loaded = load_rows(DataConfig(path=str(path), max_row_chars=1000))
    assert len(loaded.rows) == 2 and not loaded.skipped


def test_nesting_over_the_limit_and_nan_are_bad_rows(tmp_path):
    nested = {"text": "ok", "meta": json.loads("[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1))}
    lines = [json.dumps(nested), '{"text": NaN}', '{"text": "a", "score": Infinity}', '{"n": ' + "9" * 5000 + "}",
             json.dumps({"text": "kept"})]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    read = read_sources(str(path))
    assert [r.fields["text"] for r in read.rows] == ["kept"]
    reasons = [s.reason for s in read.skipped]
    assert reasons[0].startswith(f"nested more than {MAX_NESTING} levels deep")
    assert reasons[1:3] == ["not valid JSON (NaN is not a JSON value; write null or a number)",
                            "not valid JSON (Infinity is not a JSON value; write null or a number)"]
    assert reasons[3].startswith("not valid JSON (Exceeds the limit (4300 digits)")

    array = tmp_path / "d.json"
    array.write_text('[{"text": "a"}, {"text": -Infinity}, ' + "[" * DEEP + "]" * DEEP + ', {"text": "b"}]')
    read = read_sources(str(array))
    assert [r.fields["text"] for r in read.rows] == ["a", "b"]
    assert [s.where for s in read.skipped] == ["d.json[1]", "d.json[2]"]
    columns = tmp_path / "cols.json"
    columns.write_text('{"text": [NaN]}')
    with pytest.raises(DataError, match=r"cols.json: not valid JSON \(NaN is not a JSON value"):
        read_sources(str(columns))


def test_null_and_nan_where_text_is_needed_are_bad_rows_but_an_optional_null_is_fine(tmp_path, tiny_llama):
    import pandas as pd
    from transformers import AutoTokenizer

    from studio.data.building import build_dataset
    from studio.data.templates import resolve_template

    frame = pd.DataFrame({"instruction": ["Say hi", "Say bye", "Count", "Add"],
                          "input": [None, "", "1, 2", None],
                          "output": ["Hi!", None, float("nan"), "3"]})
    frame.to_parquet(tmp_path / "d.parquet")
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    built = build_dataset(DataConfig(path=str(tmp_path / "d.parquet"), max_bad_fraction=0.5), tok,
                          resolve_template("alpaca", tok), 128)
    assert len(built.train) == 2, "a null input (optional in Alpaca) is an empty input"
    assert sorted(map(str, built.skipped)) == ["d.parquet[1]: column 'output' is null; it needs text",
                                              "d.parquet[2]: column 'output' is null; it needs text"]
    import pyarrow as pa
    import pyarrow.parquet as pq

    # pandas writes NaN as null; Arrow keeps a real NaN, as other tools write it.
    pq.write_table(pa.table({"instruction": ["Half", "Twice"], "output": pa.array([0.5, float("nan")])}),
                   tmp_path / "n.parquet")
    built = build_dataset(DataConfig(path=str(tmp_path / "n.parquet"), max_bad_fraction=0.5), tok,
                          resolve_template("alpaca", tok), 128)
    assert [str(s) for s in built.skipped] == ["n.parquet[1]: column 'output' is nan, not text (a missing value "
                                               "in a table?)"]


def test_parquet_rows_with_too_much_text_are_measured_in_arrow(tmp_path):
    import pandas as pd

    pd.DataFrame({"text": ["short", "x" * 5000, "also short"]}).to_parquet(tmp_path / "d.parquet")
    read = read_sources(str(tmp_path / "d.parquet"), max_row_chars=1000)
    assert [r.fields["text"] for r in read.rows] == ["short", "also short"]
    assert str(read.skipped[0]).startswith("d.parquet[1]: row of 5,000 characters is over data.max_row_chars=1,000")


def test_csv_long_values_skip_their_record_only(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,label\nfirst,a\n"' + "x" * 300 + ' ""quoted""\nstill the same value",b\nafter,c\n'
                    + "y" * 300 + ",d\nlast,e\n")
    read = read_sources(str(path), max_row_chars=100)
    assert [r.fields["text"] for r in read.rows] == ["first", "after", "last"]
    assert [s.where for s in read.skipped] == ["d.csv:4", "d.csv:6"], "named by the line where the record ends"
    many_lines = tmp_path / "m.csv"  # no line is long, the quoted value is
    many_lines.write_text('text,label\n"' + "line\n" * 50 + '",a\nafter,b\n')
    read = read_sources(str(many_lines), max_row_chars=100)
    assert [r.fields["text"] for r in read.rows] == ["after"]
    assert read.skipped[0].reason == "a value is over data.max_row_chars=100 characters"


def test_txt_blocks_over_the_limit_and_a_txt_of_json_lines(tmp_path, tiny_llama):
    path = tmp_path / "d.txt"
    path.write_text("short block\nof two lines\n\n" + ("a long line\n" * 20) + "\n" + "x" * 500 + "\nend\n\nlast\n")
    read = read_sources(str(path), max_row_chars=100)
    assert [r.fields["text"] for r in read.rows] == ["short block\nof two lines", "last"]
    assert [str(s) for s in read.skipped] == [
        "d.txt:4: row of 239 characters is over data.max_row_chars=100 (raise it to keep such rows)",
        "d.txt:25: row of 504 characters is over data.max_row_chars=100 (raise it to keep such rows)"]
    assert read.notes == []

    from transformers import AutoTokenizer

    from studio.data.building import build_dataset
    from studio.data.preview import preview_dataset
    from studio.data.templates import resolve_template

    jsonl = tmp_path / "rows.txt"
    jsonl.write_text("\n".join(json.dumps(r) for r in NORMAL) + "\n")
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    hint = "rows.txt looks like JSON Lines (its first line is a JSON object)"
    p = preview_dataset(DataConfig(path=str(jsonl)), tok, resolve_template("alpaca", tok), 128)
    assert p.format == "text" and any(w.startswith(hint) and "Rename it to .jsonl" in w for w in p.warnings)
    built = build_dataset(DataConfig(path=str(jsonl)), tok, resolve_template("alpaca", tok), 128)
    assert any(note.startswith(hint) for note in built.notes), "the training log says it too"


def test_a_row_just_under_the_limit_tokenizes_in_seconds(tmp_path, tiny_llama):
    from transformers import AutoTokenizer

    from studio.data.preview import SHOWN_TOKENS, preview_dataset
    from studio.data.templates import resolve_template

    limit = DataConfig().max_row_chars
    words = "the quick brown fox jumps over the lazy dog; café, naïve, 中文 "
    text = (words * (limit // len(words) + 1))[: limit - 100]
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    start = time.perf_counter()
    p = preview_dataset(DataConfig(path=str(path)), tok, resolve_template("alpaca", tok), 1024)
    assert time.perf_counter() - start < 20
    assert p.rows == 1 and not p.skipped and p.stats.rows_cut == 1 and p.row_tokens == p.lengths[0] > 100_000
    # Both ends of the row are shown, and how much lies between them: not 250k pieces for a browser to draw.
    pieces = [piece for piece, _, _ in p.tokens]
    gap = next(i for i, piece in enumerate(pieces) if "tokens not shown" in piece)
    assert gap <= SHOWN_TOKENS and len(pieces) - gap - 1 <= SHOWN_TOKENS
    assert ("<s>" + text).startswith("".join(pieces[:gap])) and (text + "</s>").endswith("".join(pieces[gap + 1:]))
    assert pieces[gap] == f" … {p.row_tokens - 2 * SHOWN_TOKENS:,} tokens not shown … "


@settings(max_examples=150, deadline=None)
@given(st.lists(st.recursive(st.none() | st.integers() | st.text(max_size=40),
                             lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                                         max_size=4)), max_size=6),
       st.integers(min_value=1, max_value=9), st.integers(min_value=2, max_value=60))
def test_json_array_items_over_the_limit_are_skipped_and_the_rest_decode(values, chunk, max_chars):
    import io

    source = io.StringIO(json.dumps(values))
    start = source.read(chunk)
    while "[" not in start:
        start += source.read(chunk)
    items = list(iter_json_array(source, start, "a.json", chunk_size=chunk, max_chars=max_chars))
    assert len(items) == len(values)
    for item, value in zip(items, values):
        if isinstance(item, BadRecord):
            assert len(json.dumps(value)) > max_chars and item.chars >= len(json.dumps(value))
        else:
            assert item == value
