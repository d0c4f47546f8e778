import json

import pytest

from studio.data.formats import detect_format, to_messages
from studio.errors import DataError
from studio.data.sources import read_rows


def test_jsonl_json_csv_parquet_txt_read_the_same_rows(tmp_path):
    records = [{"instruction": "Say hi", "input": "", "output": "Hi!"},
               {"instruction": "Add, please", "input": "1, 2", "output": "3\nDone."}]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    (tmp_path / "a.json").write_text(json.dumps(records))
    (tmp_path / "cols.json").write_text(json.dumps({k: [r[k] for r in records] for k in records[0]}))
    import pandas as pd

    pd.DataFrame(records).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame(records).to_csv(tmp_path / "a.tsv", index=False, sep="\t")
    pd.DataFrame(records).to_parquet(tmp_path / "a.parquet")
    for name in ("a.jsonl", "a.json", "cols.json", "a.csv", "a.tsv", "a.parquet"):
        rows = read_rows(tmp_path / name)
        assert [r.fields["output"] for r in rows] == ["Hi!", "3\nDone."], name
        assert detect_format(rows) == "alpaca"
    (tmp_path / "a.txt").write_text("first document\n\nsecond document\n")
    assert [r.fields["text"] for r in read_rows(tmp_path / "a.txt")] == ["first document", "second document"]


def test_malformed_jsonl_line_is_named_with_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "ok"}\n{"text": broken}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:3: not valid JSON"):
        read_rows(path)


def test_bad_inputs_get_named_errors(tmp_path):
    with pytest.raises(DataError, match="Dataset not found"):
        read_rows(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="holds no rows"):
        read_rows(tmp_path / "empty.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes('{"text": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        read_rows(tmp_path / "latin1.jsonl")
    (tmp_path / "list.jsonl").write_text("[1, 2]\n")
    with pytest.raises(DataError, match=r"list\.jsonl:1: each line must be a JSON object"):
        read_rows(tmp_path / "list.jsonl")
    (tmp_path / "odd.json").write_text('"just a string"')
    with pytest.raises(DataError, match="expected a list of objects"):
        read_rows(tmp_path / "odd.json")
    (tmp_path / "x.xlsx").write_text("")
    with pytest.raises(DataError, match="unsupported file type"):
        read_rows(tmp_path / "x.xlsx")


def test_formats_become_conversations(tmp_path):
    path = tmp_path / "chat.jsonl"
    rows = [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello."}]},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]},
        {"prompt": "2+2=", "completion": "4"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    read = read_rows(path)
    assert detect_format(read) == "messages"
    assert to_messages(read[0], "messages")[0] == {"role": "system", "content": "Be brief."}
    assert to_messages(read[1], "sharegpt") == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    assert to_messages(read[2], "prompt_completion")[1]["content"] == "4"


def test_bad_rows_name_their_place(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"instruction": "x"}\n{"messages": [{"role": "wizard", "content": "hi"}]}\n')
    first, second = read_rows(path)
    with pytest.raises(DataError, match=r"rows\.jsonl:1: missing column 'output'"):
        to_messages(first, "alpaca")
    with pytest.raises(DataError, match=r"rows\.jsonl:2: turn 0 has unknown role 'wizard'"):
        to_messages(second, "messages")
    with pytest.raises(DataError, match="cannot tell the format"):
        detect_format([type(first)({"question": "?"}, "rows.jsonl:1")])


def test_column_mapping_renames_columns_and_names_a_missing_one(tmp_path):
    from studio.config import DataConfig
    from studio.data.formats import load_rows

    path = tmp_path / "qa.csv"
    path.write_text('Question Text,Answer\n"What is 2+2?","4"\n"Say hi, please","Hi!"\n')
    loaded = load_rows(DataConfig(path=str(path), columns={"instruction": "Question Text", "output": "Answer"}))
    assert loaded.format == "alpaca" and to_messages(loaded.rows[1], loaded.format)[1]["content"] == "Hi!"
    with pytest.raises(DataError, match=r"maps from 'Question'.*Its columns are: Answer, Question Text"):
        load_rows(DataConfig(path=str(path), columns={"instruction": "Question"}))


def test_column_mapping_loads_from_a_recipe(tmp_path):
    from studio.recipes import load_recipe
    from studio.errors import ConfigError

    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  columns:\n    instruction: Question Text\n")
    assert load_recipe(recipe).data.columns == {"instruction": "Question Text"}
    recipe.write_text("data:\n  columns: [a, b]\n")
    with pytest.raises(ConfigError, match="data.columns must be a mapping"):
        load_recipe(recipe)


def test_a_folder_saved_by_datasets_reads_its_train_split(tmp_path):
    from datasets import Dataset, DatasetDict

    rows = [{"prompt": "2+2=", "completion": "4"}, {"prompt": "3+3=", "completion": "6"}]
    DatasetDict({"train": Dataset.from_list(rows), "test": Dataset.from_list(rows[:1])}).save_to_disk(tmp_path / "saved")
    read = read_rows(tmp_path / "saved")
    assert [r.fields for r in read] == rows and read[1].where == "saved[1]"
    assert detect_format(read) == "prompt_completion"
    (tmp_path / "not-a-dataset").mkdir()
    with pytest.raises(DataError, match="is a folder but not a saved dataset"):
        read_rows(tmp_path / "not-a-dataset")


def test_preference_pairs_are_detected_with_texts_or_message_lists(tmp_path):
    from studio.data.formats import preference_pair

    user, chosen, rejected = ({"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                              {"role": "assistant", "content": "5"})
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
        {"prompt": [user], "chosen": [chosen], "rejected": [rejected]},
        {"chosen": [user, chosen], "rejected": [user, rejected]},  # the prompt inside each conversation
        {"chosen": "4", "rejected": "5"},
        {"prompt": "2+2?", "chosen": [user], "rejected": "5"},
    ]))
    rows = read_rows(path)
    assert detect_format(rows) == "preference"
    for row in rows[:3]:
        assert preference_pair(row) == ([user, chosen], [user, rejected]), row.where
    assert to_messages(rows[0], "preference") == [user, chosen], "SFT trains on the prompt and the chosen response"
    with pytest.raises(DataError, match=r"pairs\.jsonl:4: 'chosen' is a text, so the row needs a 'prompt' column"):
        preference_pair(rows[3])
    with pytest.raises(DataError, match=r"pairs\.jsonl:5: the chosen conversation must end with an assistant turn"):
        preference_pair(rows[4])


def test_a_format_string_template_reads_rows_by_its_fields(tmp_path):
    from studio.config import DataConfig
    from studio.data.formats import load_rows

    path = tmp_path / "dialogsum.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"id": 1, "dialogue": "A: Hi.\nB: Hello.", "summary": "They greet."},
        {"id": 2, "dialogue": "A: Bye."},
    ]))
    template = "Summarize:\n{dialogue}\n---\nSummary: {summary}"
    loaded = load_rows(DataConfig(path=str(path), template=template))
    assert loaded.format == "fields" and loaded.columns == ["id", "dialogue", "summary"]
    assert to_messages(loaded.rows[0], "fields") == [{"role": "user", "content": "A: Hi.\nB: Hello."},
                                                      {"role": "assistant", "content": "They greet."}]
    assert [str(s) for s in loaded.skipped] == [
        "dialogsum.jsonl:2: the template uses {summary}, but the row has no 'summary' (its columns: id, dialogue); "
        "map one with data.columns"]
    with pytest.raises(DataError, match="data.format=fields reads each row through a format-string template"):
        load_rows(DataConfig(path=str(path), format="fields"))
