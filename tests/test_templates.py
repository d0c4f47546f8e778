"""Masking checked token by token: trained tokens are exactly the responses (and their end marker)."""

import pytest

from studio.errors import TemplateError
from studio.data.templates import (ALPACA_TEMPLATE, Template, prompt_ids, resolve_template, stop_token_ids,
                              tokenize_conversation, tokenize_text)

CONVERSATION = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is 2 plus 2?"},
    {"role": "assistant", "content": "2 plus 2 is 4."},
    {"role": "user", "content": "And 3 plus 3?"},
    {"role": "assistant", "content": "3 plus 3 is 6."},
]


def trained_text(tokenizer, row) -> str:
    return tokenizer.decode([t for t, on in zip(row.input_ids, row.trained) if on])


def runs_of_trained(tokenizer, row) -> list[str]:
    runs, current = [], []
    for token, on in zip(row.input_ids, row.trained):
        if on:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


@pytest.fixture(scope="module")
def llama_tok(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


@pytest.fixture(scope="module")
def qwen_tok(tiny_qwen):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_qwen)


def test_auto_picks_the_models_own_template_else_alpaca(llama_tok, qwen_tok):
    assert resolve_template("auto", llama_tok).name == "alpaca"
    assert resolve_template("auto", qwen_tok).name == "model"
    with pytest.raises(TemplateError, match="no chat template of its own"):
        resolve_template("model", llama_tok)
    with pytest.raises(TemplateError, match="Unknown template 'vicuna2'"):
        resolve_template("vicuna2", llama_tok)


def test_alpaca_trains_every_response_with_eos_and_nothing_else(llama_tok):
    row = tokenize_conversation(llama_tok, resolve_template("alpaca", llama_tok), CONVERSATION, "responses")
    assert row.input_ids[0] == llama_tok.bos_token_id and row.trained[0] == 0
    assert row.text.startswith("You answer briefly.\n\n### Instruction:\nWhat is 2 plus 2?\n\n### Response:\n")
    assert runs_of_trained(llama_tok, row) == ["2 plus 2 is 4.</s>", "3 plus 3 is 6.</s>"]
    assert row.input_ids[-1] == llama_tok.eos_token_id and row.trained[-1] == 1


def test_alpaca_single_turn_matches_the_notebook_prompt(llama_tok):
    messages = [{"role": "user", "content": "Sort these.\n\n### Input:\n3, 1"}, {"role": "assistant", "content": "1, 3"}]
    row = tokenize_conversation(llama_tok, resolve_template("alpaca", llama_tok), messages, "responses")
    assert row.text == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nSort these.\n\n"
        "### Input:\n3, 1\n\n### Response:\n1, 3</s>"
    )
    assert trained_text(llama_tok, row) == "1, 3</s>"


def test_chatml_model_template_trains_each_assistant_turn_with_its_end_marker(qwen_tok):
    template = resolve_template("auto", qwen_tok)
    row = tokenize_conversation(qwen_tok, template, CONVERSATION, "responses")
    assert runs_of_trained(qwen_tok, row) == ["2 plus 2 is 4.<|im_end|>\n", "3 plus 3 is 6.<|im_end|>\n"]
    im_end = qwen_tok.convert_tokens_to_ids("<|im_end|>")
    assert row.input_ids.count(im_end) == 5  # one per turn, each a single special token
    assert im_end in stop_token_ids(qwen_tok)


def test_plain_template_trains_completion_and_eos(llama_tok):
    messages = [{"role": "user", "content": "The sky is"}, {"role": "assistant", "content": " blue."}]
    row = tokenize_conversation(llama_tok, resolve_template("plain", llama_tok), messages, "responses")
    assert row.text == "The sky is blue.</s>"
    assert trained_text(llama_tok, row) == " blue.</s>"


def test_train_on_all_trains_every_token_but_bos(llama_tok):
    row = tokenize_conversation(llama_tok, resolve_template("alpaca", llama_tok), CONVERSATION, "all")
    assert row.trained[0] == 0 and all(row.trained[1:])
    text = tokenize_text(llama_tok, "Just some text.")
    assert text.text == "Just some text.</s>" and all(text.trained[1:])


def test_prompt_ids_end_with_the_generation_prompt(llama_tok):
    ids = prompt_ids(llama_tok, resolve_template("alpaca", llama_tok), [{"role": "user", "content": "Hi"}])
    assert llama_tok.decode(ids).endswith("### Response:\n")
    assert ids[0] == llama_tok.bos_token_id and ids.count(llama_tok.bos_token_id) == 1


def test_template_that_is_not_prefix_stable_is_refused(llama_tok):
    # Renders earlier turns differently once a later turn exists: responses cannot be located.
    unstable = Template("unstable", "{% for m in messages %}{{ m['content'] }}{% if loop.last %}!{% endif %}{% endfor %}", "test")
    with pytest.raises(TemplateError, match="renders turn 2 differently"):
        tokenize_conversation(llama_tok, unstable, CONVERSATION[1:3], "responses")
    assert "eos_token" in ALPACA_TEMPLATE


@pytest.mark.parametrize("name", ["alpaca", "chatml", "llama3", "gemma", "mistral", "phi3", "vicuna", "plain"])
def test_every_gallery_template_trains_exactly_the_responses(llama_tok, name):
    from studio.data.templates import GALLERY

    row = tokenize_conversation(llama_tok, resolve_template(name, llama_tok), CONVERSATION, "responses")
    runs = runs_of_trained(llama_tok, row)
    assert len(runs) == 2, runs
    for run, answer in zip(runs, ("2 plus 2 is 4.", "3 plus 3 is 6.")):
        assert run.strip().startswith(answer), (name, run)
        end = run.strip()[len(answer):]
        assert end, f"{name}: the end of the turn ({end!r}) is trained too, so the model learns to stop"
    assert name in GALLERY


def test_a_jinja_file_is_a_template_and_warnings_explain_the_choice(llama_tok, qwen_tok, tmp_path):
    from studio.data.templates import template_warnings

    path = tmp_path / "mine.jinja"
    path.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    assert resolve_template(str(path), llama_tok).name == "mine"
    assert "no chat template" in template_warnings(llama_tok, resolve_template("auto", llama_tok))[0]
    assert "its own chat template" in template_warnings(qwen_tok, resolve_template("alpaca", qwen_tok))[0]
    assert template_warnings(qwen_tok, resolve_template("auto", qwen_tok)) == []


def trained_runs_of_ids(row) -> list[list[int]]:
    runs, current = [], []
    for token, on in zip(row.input_ids + [None], row.trained + [0]):
        if on:
            current.append(token)
        elif current:
            runs, current = runs + [current], []
    return runs


@pytest.mark.parametrize("name", ["alpaca", "chatml", "llama3", "gemma", "mistral", "phi3", "vicuna", "plain"])
def test_every_trained_response_ends_with_a_token_that_stops_generation(llama_tok, qwen_tok, name):
    # The tiny Llama has none of the end-of-turn tokens (<|im_end|>, <|eot_id|>, ... are plain text to it):
    # EOS is added after them. The tiny Qwen has <|im_end|> as one token: nothing is added for ChatML.
    for tok in (llama_tok, qwen_tok):
        stops = set(stop_token_ids(tok))
        for train_on in ("responses", "all"):
            row = tokenize_conversation(tok, resolve_template(name, tok), CONVERSATION, train_on)
            runs = trained_runs_of_ids(row)
            assert len(runs) == (2 if train_on == "responses" else 1)
            for run in runs:
                last_stop = max((i for i, t in enumerate(run) if t in stops), default=None)
                assert last_stop is not None, (name, train_on, tok.decode(run))
                assert tok.decode(run[last_stop + 1:]).strip() == "", "only white space after the stop token"
    chatml_on_llama = tokenize_conversation(llama_tok, resolve_template("chatml", llama_tok), CONVERSATION, "responses")
    assert runs_of_trained(llama_tok, chatml_on_llama)[0] == "2 plus 2 is 4.<|im_end|>\n</s>"


def test_format_string_and_jinja_text_are_templates(llama_tok):
    from studio.data.templates import FieldTemplate

    template = resolve_template("### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n{output}",
                                llama_tok)
    assert (template.name, template.source) == ("custom", "format string")
    fields = FieldTemplate.parse("### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n{output}")
    assert fields.fields == ["instruction", "input", "output"]
    user = fields.user_text({"instruction": "Sort", "input": "3, 1"})
    row = tokenize_conversation(llama_tok, template, [{"role": "user", "content": user},
                                                      {"role": "assistant", "content": "1, 3"}], "responses")
    assert row.text == "### Instruction:\nSort\n\n### Input:\n3, 1\n\n### Response:\n1, 3</s>"
    assert runs_of_trained(llama_tok, row) == ["1, 3</s>"]
    assert resolve_template("{% for m in messages %}{{ m['content'] }}{% endfor %}", llama_tok).source == "text"
    for bad, reason in [("Answer: {answer}", "at least two plain named fields"), ("{q} {a:>5}", r"\(not \{a\}\)"),
                        ("{q} {a", "not a valid format string")]:
        with pytest.raises(TemplateError, match=reason):
            resolve_template(bad, llama_tok)
