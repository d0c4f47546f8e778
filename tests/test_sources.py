"""Reading sources: txt documents, several files, hub ids offline, malformed rows skipped and named, bounded reads."""

import json

import pytest

from studio.config import DataConfig
from studio.data.formats import load_rows
from studio.errors import DataError
from studio.data.sources import read_rows, read_sources


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_txt_is_one_document_per_line_or_per_blank_line_block(tmp_path):
    blocks = tmp_path / "blocks.txt"
    blocks.write_text("Title one\nbody of one\n\n\nTitle two\r\nbody of two\n  \nthree\n\n")
    assert [(r.fields["text"], r.where) for r in read_sources(str(blocks)).rows] == [
        ("Title one\nbody of one", "blocks.txt:1"), ("Title two\nbody of two", "blocks.txt:5"), ("three", "blocks.txt:8")]
    assert len(read_sources(str(blocks), text_unit="line").rows) == 5, "text_unit=line overrides the detection"
    lines = tmp_path / "lines.txt"
    lines.write_text("first\nsecond\nthird\n\n")  # a trailing blank line does not make blocks
    assert [r.fields["text"] for r in read_sources(str(lines)).rows] == ["first", "second", "third"]
    assert [r.fields["text"] for r in read_sources(str(lines), text_unit="block").rows] == ["first\nsecond\nthird"]


def test_several_files_by_glob_or_commas_read_in_order(tmp_path):
    (tmp_path / "shards").mkdir()
    for i in range(3):
        write_jsonl(tmp_path / "shards" / f"part-{i}.jsonl", [{"text": f"shard {i} row {j}"} for j in range(2)])
    extra = tmp_path / "extra.csv"
    extra.write_text("text\nfrom csv\n")
    read = read_sources(f"{tmp_path}/shards/part-*.jsonl, {extra}")
    assert [r.fields["text"] for r in read.rows][-3:] == ["shard 2 row 0", "shard 2 row 1", "from csv"]
    assert len(read.sources) == 4 and read.rows[0].where == "part-0.jsonl:1"
    with pytest.raises(DataError, match=r"No file matches .*nothing-\*\.jsonl"):
        read_sources(f"{tmp_path}/nothing-*.jsonl")
    # Two sources of the same name are told apart by their paths.
    (tmp_path / "b").mkdir()
    write_jsonl(tmp_path / "b" / "part-0.jsonl", [{"text": "other"}])
    read = read_sources(f"{tmp_path}/*/part-0.jsonl")
    assert read.rows[-1].where == f"{tmp_path}/shards/part-0.jsonl:2"


def test_a_hub_id_offline_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"Hub dataset 'someone/dialogsum' \(subset 'v2'\), split 'test' cannot be "
                                        r"loaded: the hub is unreachable"):
        load_rows(DataConfig(path="someone/dialogsum", subset="v2", split="test"))
    with pytest.raises(DataError, match="Dataset not found: missing.jsonl"):
        read_sources("missing.jsonl")  # a file name is never taken for a hub id


def test_a_saved_dataset_folder_reads_the_chosen_split(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list([{"text": "a"}]), "test": Dataset.from_list([{"text": "b"}])}).save_to_disk(
        tmp_path / "saved")
    assert read_sources(str(tmp_path / "saved"), split="test").rows[0].fields == {"text": "b"}
    with pytest.raises(DataError, match="has no split 'validation'; its splits are: train, test"):
        read_sources(str(tmp_path / "saved"), split="validation")


def test_malformed_rows_are_skipped_named_and_counted(tmp_path):
    path = tmp_path / "mixed.jsonl"
    good = [json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) for i in range(18)]
    path.write_text("\n".join(good[:5] + ["{broken", "[1, 2]"] + good[5:]) + "\n")
    read = read_sources(str(path))
    assert len(read.rows) == 18
    assert [str(s) for s in read.skipped] == ["mixed.jsonl:6: not valid JSON (Expecting property name enclosed in "
                                              "double quotes at column 2)",
                                              "mixed.jsonl:7: each line must be a JSON object, got list"]
    csv_path = tmp_path / "short.csv"
    csv_path.write_text('instruction,output\nq,a\nonly one value\n"x, y",b,extra\n')
    assert [str(s) for s in read_sources(str(csv_path)).skipped] == [
        "short.csv:3: 1 values, but the header names 2 columns",
        "short.csv:4: 3 values, but the header names 2 columns (quote values that contain the delimiter)"]


def test_whole_file_problems_are_named_errors(tmp_path):
    (tmp_path / "utf16.csv").write_text("text\nhello\n", encoding="utf-16")
    with pytest.raises(DataError, match=r"utf16\.csv is UTF-16 text .* Save it as UTF-8"):
        read_sources(str(tmp_path / "utf16.csv"))
    (tmp_path / "latin1.csv").write_bytes("text\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.csv: not UTF-8 text"):
        read_sources(str(tmp_path / "latin1.csv"))
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "ok.txt").write_text("a document\n")
    with pytest.raises(DataError, match=r"empty\.txt holds no rows"):
        read_sources(f"{tmp_path}/ok.txt,{tmp_path}/empty.txt")
    (tmp_path / "number.json").write_text("42")
    with pytest.raises(DataError, match=r"number\.json: expected a list of objects .* got int"):
        read_sources(str(tmp_path / "number.json"))
    (tmp_path / "cut.json").write_text('[{"text": "a"},\n {"text": "b"}')
    with pytest.raises(DataError, match=r"cut\.json:2: not valid JSON \(the array is not closed\)"):
        read_sources(str(tmp_path / "cut.json"))
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbftext\nhello\n")  # as Excel saves UTF-8
    assert read_rows(tmp_path / "bom.csv")[0].fields == {"text": "hello"}


def test_a_csv_without_the_mapped_column_is_named(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text("question,answer\nq,a\n")
    with pytest.raises(DataError, match=r"qa\.csv:2: data\.columns maps from 'Question Text'.*Its columns are: "
                                        r"answer, question"):
        load_rows(DataConfig(path=str(path), columns={"instruction": "Question Text"}))


def test_a_big_file_is_read_only_as_far_as_the_limit(tmp_path):
    row = {"instruction": "Explain this " * 8, "input": "", "output": "Because " * 20}
    jsonl = write_jsonl(tmp_path / "big.jsonl", [row] * 20_000)
    (tmp_path / "big.json").write_text(json.dumps([row] * 20_000))
    assert jsonl.stat().st_size > 4_000_000
    for name in ("big.jsonl", "big.json"):
        sample = read_sources(str(tmp_path / name), limit=500)
        assert len(sample.rows) == 500 and not sample.complete and sample.size > 4_000_000
    whole = read_sources(str(tmp_path / "big.json"))
    assert len(whole.rows) == 20_000 and whole.complete and whole.rows[-1].where == "big.json[19999]"


def test_parquet_keeps_nested_message_lists(tmp_path):
    import pandas as pd

    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    pd.DataFrame({"messages": [messages, messages]}).to_parquet(tmp_path / "chat.parquet")
    loaded = load_rows(DataConfig(path=str(tmp_path / "chat.parquet")))
    assert loaded.format == "messages" and loaded.rows[1].fields["messages"] == messages
