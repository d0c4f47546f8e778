"""Streaming chat from the trained run: adapter on and off on the same weights, and from a GGUF file."""

import threading

from studio.chat.stream import stream_reply
from studio.chat.session import ChatSession
from studio.config import GenerationConfig

PROMPT = [{"role": "user", "content": "What is the capital of Peru?"}]


def test_adapter_on_and_off_answer_differently_without_reloading(trained_run):
    session = ChatSession.open(str(trained_run))
    model = session.repliers["tuned"].model
    try:
        assert session.repliers["base"].model is model, "one copy of the weights answers as both"
        weights_before = {n: p.clone() for n, p in model.named_parameters() if "lora_B" in n}
        tuned = list(session.stream(PROMPT, "tuned"))
        base = list(session.stream(PROMPT, "base"))
        assert len(tuned) > 1, "tokens arrive one piece at a time"
        assert "".join(tuned) != "".join(base)
        assert "".join(session.stream(PROMPT, "tuned")) == "".join(tuned), "greedy is reproducible"
        for name, param in model.named_parameters():
            if name in weights_before:
                assert param.equal(weights_before[name]), "switching the adapter off must not change it"
    finally:
        session.close()


def test_stop_event_ends_generation_early(trained_run):
    session = ChatSession.open(str(trained_run))
    try:
        stop = threading.Event()
        pieces = []
        for piece in session.stream(PROMPT, "tuned", stop, GenerationConfig(max_new_tokens=200)):
            pieces.append(piece)
            stop.set()
        assert len(pieces) < 10
    finally:
        session.close()


def test_gguf_chat_streams_with_the_runs_template(trained_run):
    from studio.export.exporting import export_run

    gguf = next(p for p in export_run(trained_run, gguf_types=("q8_0",)).files if p.suffix == ".gguf")
    session = ChatSession.open(str(trained_run), gguf=str(gguf))
    try:
        pieces = list(session.stream(PROMPT, "gguf"))
        assert pieces and all(isinstance(p, str) for p in pieces)
    finally:
        session.close()


def test_end_of_turn_markers_spelled_with_several_tokens_end_the_reply_and_stay_hidden(tiny_llama):
    from transformers import AutoTokenizer

    from studio.chat.stream import without_markers
    from studio.data.templates import resolve_template, stop_markers

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    assert stop_markers(tokenizer, resolve_template("chatml", tokenizer)) == ["<|im_end|>"]  # not in Llama's vocabulary
    assert stop_markers(tokenizer, resolve_template("alpaca", tokenizer)) == []  # ends with </s>, one token
    pieces = ["The capital", " is Lima.<|im", "_end|>", "\nand then more"]
    assert "".join(without_markers(iter(pieces), ["<|im_end|>"])) == "The capital is Lima."
    assert "".join(without_markers(iter(["a <|i", "m not a marker"]), ["<|im_end|>"])) == "a <|im not a marker"


def test_a_reply_with_stop_strings_streams_on_the_hf_model(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from studio.chat.stream import stream_reply
    from studio.config import GenerationConfig
    from studio.data.templates import resolve_template

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    template = resolve_template("chatml", tokenizer)
    reply = "".join(stream_reply(model, tokenizer, template, [{"role": "user", "content": "Hello"}],
                                 GenerationConfig(max_new_tokens=6)))
    assert isinstance(reply, str) and "<|im_end|>" not in reply


def test_a_full_finetune_is_compared_with_its_original_base(tiny_llama, tmp_path):
    from conftest import tiny_config, train_tiny

    from studio.chat.session import OriginalBase
    from studio.models import load_model

    run = train_tiny(tiny_config(tiny_llama, "lora.enabled=false", "train.max_steps=3",
                                 "train.learning_rate=1e-3"), tmp_path).run_dir
    session = ChatSession.open(str(run))
    try:
        assert isinstance(session.repliers["base"], OriginalBase), "a full fine-tune has no adapter to switch off"
        tuned, base = "".join(session.stream(PROMPT, "tuned")), "".join(session.stream(PROMPT, "base"))
        original, tokenizer = load_model(session.repliers["base"].model_config)
        expected = "".join(stream_reply(original.eval(), tokenizer, session.repliers["tuned"].template, PROMPT,
                                        session.generation))
        assert base == expected, "the base pane answers as the original model"
        assert tuned != base, "not the fine-tuned model compared with itself"
    finally:
        session.close()


def test_chat_settings_arrive_exactly_as_typed(trained_run):
    from studio.chat.panes import ReplySettings
    from studio.recipes import with_changes
    from studio.services import Studio

    tricky = 'He said "don\'t"\tthen: {x}\n# not a comment'
    assert with_changes(GenerationConfig(), system_prompt=tricky).system_prompt == tricky
    seen = []
    studio = Studio(runs_dir=trained_run.parent)
    session = studio.chat.run_session(trained_run.name, None)  # a run named as in its runs folder
    original = session.stream
    session.stream = lambda messages, mode, stop=None, generation=None: (seen.append(generation), original(
        messages, mode, stop, generation))[1]
    try:
        list(studio.stream_pane("tuned", trained_run.name, None, None, PROMPT,
                                ReplySettings(system_prompt=tricky, max_new_tokens=4)))
    finally:
        studio.close_chat()
    assert seen[0].system_prompt == tricky and seen[0].max_new_tokens == 4
    assert seen[0].top_k == session.generation.top_k, "what the reply does not set stays the run's"
