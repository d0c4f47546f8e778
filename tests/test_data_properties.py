"""Property-based tests: the loaders take anything and either read rows or raise a DataError, nothing else."""

import csv
import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from studio.data import read_rows
from studio.errors import DataError

# CI explores the same 60 examples every run (a failure is reproducible, never flaky);
# WIDE_SEARCH=2000 searches that many fresh random examples instead.
WIDE = int(os.environ.get("WIDE_SEARCH", "0"))
SETTINGS = settings(max_examples=WIDE or 60, deadline=None, derandomize=not WIDE,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
records = st.lists(st.fixed_dictionaries({"instruction": text, "input": text, "output": text}), min_size=1, max_size=8)


@SETTINGS
@given(st.binary(max_size=400), st.sampled_from([".jsonl", ".json", ".csv", ".tsv", ".txt"]))
def test_any_bytes_give_rows_or_a_named_error(tmp_path, data, suffix):
    path = tmp_path / f"random{suffix}"
    path.write_bytes(data)
    try:
        rows = read_rows(path)
    except DataError as exc:
        assert str(exc)  # a message for people
    else:
        assert rows and all(isinstance(r.fields, dict) for r in rows)


@SETTINGS
@given(st.lists(st.recursive(st.none() | st.booleans() | st.integers() | text,
                             lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3)),
                max_size=6))
def test_any_json_lines_give_rows_or_an_error_naming_the_line(tmp_path, values):
    path = tmp_path / "values.jsonl"
    path.write_text("\n".join(json.dumps(v) for v in values) + "\n", encoding="utf-8")
    try:
        rows = read_rows(path)
    except DataError as exc:
        assert "values.jsonl" in str(exc)
    else:
        assert len(rows) == sum(isinstance(v, dict) for v in values)


@SETTINGS
@given(records)
def test_records_survive_jsonl_json_and_csv(tmp_path, rows):
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "r.json").write_text(json.dumps(rows), encoding="utf-8")
    with (tmp_path / "r.csv").open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["instruction", "input", "output"])
        writer.writeheader()
        writer.writerows(rows)
    for name in ("r.jsonl", "r.json", "r.csv"):
        assert [r.fields for r in read_rows(tmp_path / name)] == rows, name
