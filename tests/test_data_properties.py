"""Property-based tests: the loaders take anything and either read rows or raise a DataError, nothing else."""

import csv
import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from studio.errors import DataError
from studio.data.sources import read_rows

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


# ---------------------------------------------------------------- lenient reading, new sources


@SETTINGS
@given(st.binary(max_size=400), st.sampled_from([".jsonl", ".json", ".csv", ".tsv", ".txt", ".parquet"]),
       st.sampled_from(["auto", "line", "block"]))
def test_reading_leniently_gives_rows_and_named_skips_or_a_named_error(tmp_path, data, suffix, text_unit):
    from studio.data.sources import read_sources

    path = tmp_path / f"random{suffix}"
    path.write_bytes(data)
    try:
        read = read_sources(str(path), text_unit=text_unit, limit=50)
    except DataError as exc:
        assert str(exc)
    else:
        assert read.rows or read.skipped
        assert all(s.where.startswith("random") and s.reason for s in read.skipped)


@SETTINGS
@given(st.lists(st.one_of(st.dictionaries(text, text, max_size=2), st.integers(), st.just("{broken")), max_size=8))
def test_each_malformed_json_line_is_skipped_with_its_line(tmp_path, values):
    from studio.data.sources import read_sources

    path = tmp_path / "values.jsonl"
    lines = [v if v == "{broken" else json.dumps(v) for v in values]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    try:
        read = read_sources(str(path))
    except DataError as exc:
        assert not values and "holds no rows" in str(exc)
        return
    assert [r.fields for r in read.rows] == [v for v in values if isinstance(v, dict)]
    assert [s.where for s in read.skipped] == [f"values.jsonl:{i + 1}" for i, v in enumerate(values)
                                               if not isinstance(v, dict)]


@SETTINGS
@given(st.lists(st.lists(text.filter(lambda t: t.strip() and "\n" not in t and "\r" not in t), min_size=1,
                         max_size=3), min_size=1, max_size=5))
def test_txt_blocks_come_back_as_written(tmp_path, documents):
    from studio.data.sources import read_sources

    path = tmp_path / "docs.txt"
    path.write_text("\n\n".join("\n".join(lines) for lines in documents) + "\n", encoding="utf-8")
    texts = [r.fields["text"] for r in read_sources(str(path), text_unit="block").rows]
    # Lines of white space only end a block too.
    expected = ["\n".join(group) for lines in documents for group in _split_on_blank(lines)]
    assert texts == expected


def _split_on_blank(lines):
    groups, current = [], []
    for line in lines:
        if line.strip():
            current.append(line)
        elif current:
            groups, current = groups + [current], []
    return groups + ([current] if current else [])


# NaN and Infinity are no JSON values: the reader skips items holding them (tests/test_bounded.py).
FINITE = st.floats(allow_nan=False, allow_infinity=False)


@SETTINGS
@given(st.lists(st.recursive(st.none() | st.booleans() | st.integers() | FINITE | text,
                             lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3)),
                max_size=6),
       st.integers(min_value=1, max_value=9), st.booleans())
def test_json_arrays_decode_item_by_item_across_any_chunk_size(values, chunk, indent):
    import io

    from studio.data.bounded import iter_json_array

    source = io.StringIO(json.dumps(values, indent=1 if indent else None, ensure_ascii=False))
    start = source.read(chunk)
    while "[" not in start:
        start += source.read(chunk)
    assert list(iter_json_array(source, start, "a.json", chunk_size=chunk)) == values


literal = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="{}"), max_size=15)


@SETTINGS
@given(st.lists(literal, min_size=3, max_size=4), st.lists(text, min_size=3, max_size=3))
def test_format_string_templates_render_as_python_formats_them(tiny_llama, literals, values):
    from transformers import AutoTokenizer

    from studio.data.templates import FieldTemplate, resolve_template, tokenize_conversation

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    names = [f"f{i}" for i in range(len(literals) - 1)]
    format_string = "".join(lit + "{" + name + "}" for lit, name in zip(literals, names)) + literals[-1]
    fields = dict(zip(names, values + [""]))
    parsed = FieldTemplate.parse(format_string)
    messages = [{"role": "user", "content": parsed.user_text(fields)},
                {"role": "assistant", "content": fields[parsed.response]}]
    row = tokenize_conversation(tok, resolve_template(format_string, tok), messages, "responses")
    assert row.text == format_string.format(**fields) + tok.eos_token
    assert row.input_ids[-1] == tok.eos_token_id and row.trained[-1] == 1
