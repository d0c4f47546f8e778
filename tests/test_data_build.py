"""From rows to what trains, with a real tokenizer: skipped rows, refusals, eval files, preference pairs,
format-string templates, and the preview of a big file."""

import json

import pytest

from studio.config import DataConfig
from studio.data.building import build_dataset
from studio.errors import DataError
from studio.data.preview import PREVIEW_ROWS, preview_dataset
from studio.data.templates import resolve_template


@pytest.fixture(scope="module")
def tok(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


def alpaca_rows(n: int, start: int = 0) -> list[str]:
    return [json.dumps({"instruction": f"What is {i} plus {i}?", "input": "", "output": f"It is {2 * i}."})
            for i in range(start, start + n)]


def write(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def build(tok, template="alpaca", max_length=128, **data):
    return build_dataset(DataConfig(**data), tok, resolve_template(template, tok), max_length)


def test_malformed_rows_are_skipped_up_to_max_bad_fraction(tok, tmp_path):
    lines = alpaca_rows(18)
    lines[3] = '{"instruction": "no output"}'
    lines[9] = '{"instruction": '
    path = write(tmp_path / "d.jsonl", lines)
    built = build(tok, path=path, max_bad_fraction=0.2)
    assert len(built.train) == 16
    assert built.summary == ("Kept 16 of 18 rows; 2 skipped: d.jsonl:10: not valid JSON (Expecting value at column "
                             "17); d.jsonl:4: missing column 'output'.")
    with pytest.raises(DataError, match=r"Too many malformed rows: 2 of 18, more than data.max_bad_fraction=0.1 "
                                        r"allows\. Kept 16 of 18 rows; 2 skipped: d\.jsonl:10: .*raise "
                                        r"data\.max_bad_fraction"):
        build(tok, path=path)
    with pytest.raises(DataError, match=r"^d\.jsonl:10: not valid JSON .*\(data\.max_bad_fraction is 0"):
        build(tok, path=path, max_bad_fraction=0)
    bad = write(tmp_path / "bad.jsonl", ['{"question": "?"}', '{"question": "!"}'])
    with pytest.raises(DataError, match=r"Nothing left to train on: every row is malformed\. Kept 0 of 2 rows"):
        build(tok, path=bad, format="alpaca")


def test_a_template_that_fails_on_a_row_names_the_row(tok, tmp_path):
    path = write(tmp_path / "chat.jsonl", [
        json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}),
        json.dumps({"messages": [{"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "Ok."}]}),
    ])
    strict = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role here') }}"
              "{% endif %}{{ m['content'] + eos_token }}{% endfor %}")
    with pytest.raises(DataError, match=r"Kept 1 of 2 rows; 1 skipped: chat\.jsonl:2: Template 'custom' cannot render "
                                        r"this conversation: no system role here"):
        build(tok, template=strict, path=path)


def test_a_separate_eval_file_replaces_eval_fraction(tok, tmp_path):
    train = write(tmp_path / "train.jsonl", alpaca_rows(12))
    evaluation = write(tmp_path / "eval.jsonl", alpaca_rows(3, start=100))
    built = build(tok, path=train, eval_path=evaluation)
    assert (len(built.train), len(built.eval)) == (12, 3)
    assert "100 plus 100" in built.eval[0].text
    from studio.config import RunConfig
    from studio.errors import ConfigError
    from studio.recipes import apply_overrides

    with pytest.raises(ConfigError, match="data.eval_path and data.eval_fraction are alternatives"):
        apply_overrides(RunConfig(), [f"data.path={train}", f"data.eval_path={evaluation}", "data.eval_fraction=0.2"])
    chat = write(tmp_path / "chat.jsonl", [json.dumps({"prompt": "a", "completion": "b"})])
    with pytest.raises(DataError, match="holds prompt_completion rows, but the training data is alpaca"):
        build(tok, path=train, eval_path=chat)


def test_preference_pairs_train_the_chosen_response_and_preview_both(tok, tmp_path):
    path = write(tmp_path / "pairs.jsonl", [
        json.dumps({"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."}),
        json.dumps({"prompt": "2+2?", "chosen": "4", "rejected": "4"}),
    ])
    built = build(tok, path=path)
    assert built.format == "preference" and built.notes and "chosen" in built.notes[0]
    trained = [tok.decode([t for t, on in zip(r.input_ids, r.trained) if on]) for r in built.train]
    assert sorted(trained) == ["4</s>", "Paris.</s>"]

    p = preview_dataset(DataConfig(path=path), tok, resolve_template("alpaca", tok), 128, row=0)
    assert (p.format, p.detected) == ("preference", True)
    assert "".join(piece for piece, on, _ in p.tokens if on) == "Paris.</s>"
    assert not any(on for _, on, _ in p.rejected) and "Lyon." in "".join(piece for piece, _, _ in p.rejected), \
        "sft shows the rejected side, untrained: it does not use it"
    assert p.stats.identical_pairs == 1 and any("rejected responses are not used" in w for w in p.warnings)


def test_format_string_template_trains_the_last_field_and_chat_sees_the_same_prompt(tok, tmp_path):
    from studio.data.templates import prompt_ids

    path = write(tmp_path / "dialogsum.jsonl", [
        json.dumps({"dialogue": "A: Lunch?\nB: Sure, at noon.", "summary": "They meet for lunch at noon."})])
    format_string = "Summarize:\n{dialogue}\n---\nSummary: {summary}"
    template = resolve_template(format_string, tok)
    built = build_dataset(DataConfig(path=path, template=format_string), tok, template, 128)
    row = built.train[0]
    assert row.text == "Summarize:\nA: Lunch?\nB: Sure, at noon.\n---\nSummary: They meet for lunch at noon.</s>"
    assert tok.decode([t for t, on in zip(row.input_ids, row.trained) if on]) == " They meet for lunch at noon.</s>"
    # Chat with the run's template: the user types the dialogue, the prompt is the training prompt.
    asked = prompt_ids(tok, template, [{"role": "user", "content": "A: Lunch?\nB: Sure, at noon."}])
    untrained = [t for t, on in zip(row.input_ids, row.trained) if not on]
    assert asked == untrained


def test_the_preview_of_a_big_file_reads_a_sample(tok, tmp_path):
    path = write(tmp_path / "big.jsonl", alpaca_rows(30_000))
    assert (tmp_path / "big.jsonl").stat().st_size > 2_000_000
    p = preview_dataset(DataConfig(path=path), tok, resolve_template("alpaca", tok), 128, row=5)
    assert p.rows == PREVIEW_ROWS and not p.complete and p.stats.sampled and len(p.lengths) == PREVIEW_ROWS
    assert "5 plus 5" in p.text
    far = preview_dataset(DataConfig(path=path), tok, resolve_template("alpaca", tok), 128, row=PREVIEW_ROWS + 10)
    assert far.row == PREVIEW_ROWS + 10 and f"{PREVIEW_ROWS + 10} plus" in far.text


def test_training_with_a_format_string_template_and_an_eval_file(tiny_llama, tmp_path):
    from conftest import tiny_config, train_tiny

    from studio.recipes import replace_section
    from studio.events import read_events
    from studio.runs import read_template

    rows = [json.dumps({"dialogue": f"A: Meet at {h}?\nB: Yes, {h} works.", "summary": f"They meet at {h}."})
            for h in range(1, 13)]
    train, evaluation = write(tmp_path / "train.jsonl", rows[:10]), write(tmp_path / "eval.jsonl", rows[10:])
    cfg = tiny_config(tiny_llama, "train.max_steps=2", "train.eval_steps=2", "train.save_steps=100")
    cfg = replace_section(cfg, "data", path=train, eval_path=evaluation, max_samples=0,
                          template="Summarize:\n{dialogue}\n---\nSummary: {summary}")
    result = train_tiny(cfg, tmp_path)
    assert result.state == "completed"
    assert [e.step for e in read_events(result.run_dir / "events.jsonl") if e.kind == "eval"] == [2]
    assert '"\\n---\\nSummary:"' in read_template(result.run_dir).jinja, "chat and export get the same prompt"
