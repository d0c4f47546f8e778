"""The token preview: characters split across tokens shown whole, one count of rows, the columns to map."""

import json

import pytest

from studio.config import DataConfig
from studio.data.preview import data_columns, preview_dataset
from studio.data.templates import resolve_template


@pytest.fixture(scope="module")
def tok(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


def test_characters_split_across_tokens_are_shown_whole_and_coloured_right(tok, tmp_path):
    # The tiny tokenizer never saw these characters: each is two to four byte tokens.
    row = {"instruction": "Translate ŋ ŧ and 中文测试", "input": "", "output": "Ω ж ק 🦙✅ ก"}
    assert any("\ufffd" in tok.decode([t]) for t in tok(row["output"], add_special_tokens=False)["input_ids"])
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    p = preview_dataset(DataConfig(path=str(path)), tok, resolve_template("alpaca", tok), 128)
    pieces = [piece for piece, _, _ in p.tokens]
    assert not any("\ufffd" in piece for piece in pieces), pieces
    assert "".join(pieces) == "<s>" + p.text
    assert "".join(piece for piece, trained, _ in p.tokens if trained) == "Ω ж ק 🦙✅ ก</s>"
    joined = [(piece, trained) for piece, trained, _ in p.tokens if "ŋ" in piece or "🦙" in piece]
    assert [trained for _, trained in joined] == [False, True], "a joined piece is trained as its tokens are"
    assert len(pieces) < p.row_tokens == p.lengths[0], "tokens were joined into fewer pieces"
    assert p.trained_tokens == len(tok("Ω ж ק 🦙✅ ก", add_special_tokens=False)["input_ids"]) + 1, "tokens, not pieces"


def test_one_count_of_rows_everywhere(tok, tmp_path, monkeypatch):
    rows = [json.dumps({"instruction": f"Add {i} and {i}", "input": "", "output": f"{2 * i}"}) for i in range(60)]
    rows[10:10] = ["{not json", json.dumps({"instruction": "no output"}), json.dumps({"text": "x" * 300})]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(rows) + "\n")
    cfg = DataConfig(path=str(path), max_row_chars=200)
    p = preview_dataset(cfg, tok, resolve_template("alpaca", tok), 128)
    assert (p.rows, p.read, len(p.skipped), p.stats.rows) == (60, 63, 3, 60)
    assert p.count_line == "Kept 60 of 63 rows (3 skipped)" and p.sample_note == ""
    assert [s.where for s in p.skipped] == ["d.jsonl:11", "d.jsonl:13", "d.jsonl:12"]

    from studio.data import preview

    monkeypatch.setattr(preview, "PREVIEW_ROWS", 20)
    sample = preview_dataset(cfg, tok, resolve_template("alpaca", tok), 128)
    assert sample.count_line == "Kept 17 of 20 rows (3 skipped)"
    assert sample.sample_note.startswith("A sample: the preview read the first 20 rows of ")
    assert sample.sample_note.endswith(" MB; training reads all of it.")


def test_the_columns_to_map_come_without_a_format(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text("Question Text,Answer,Source\nWhat?,That.,book\n")
    assert data_columns(DataConfig(path=str(path))) == ["Question Text", "Answer", "Source"]
