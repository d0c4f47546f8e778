"""grpo on a tiny real model: the reward rises, rewards score as documented, bad reward files are named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import tiny_config, train_tiny

ROOT = Path(__file__).resolve().parent.parent
ARITHMETIC = ROOT / "assets" / "sample_arithmetic.jsonl"
COLOURS = ["red", "blue", "green", "yellow"]


def events_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def rewards_logged(run_dir: Path) -> list[float]:
    return [e["extra"]["metrics"]["reward"] for e in events_of(run_dir) if e["kind"] == "log"]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def grpo_config(model: Path, prompts: Path, *overrides: str):
    return tiny_config(model, "train.method=grpo", f"data.path={prompts}", "data.template=plain",
                       "train.batch_size=8", "train.grad_accum=1", "grpo.num_generations=8",
                       "grpo.max_completion_length=4", "train.save_steps=100", *overrides)


@pytest.fixture(scope="module")
def colour_model(tiny_llama, tmp_path_factory) -> Path:
    """The tiny model fine-tuned (all weights) to name one of four colours, each as often: a choice to learn."""
    folder = tmp_path_factory.mktemp("colours")
    rows = [{"prompt": f"Pick a colour for box {i}:", "completion": f" {COLOURS[i % 4]}"} for i in range(64)]
    data = write_rows(folder / "colours.jsonl", rows)
    run = train_tiny(tiny_config(tiny_llama, f"data.path={data}", "data.template=plain",
                                 "lora.enabled=false", "train.max_steps=20", "train.save_steps=100"), folder / "runs")
    assert run.state == "completed"
    return run.run_dir / "model"


@pytest.fixture(scope="module")
def blue_run(colour_model, tmp_path_factory) -> Path:
    """GRPO (LoRA) rewarding "blue": a preset (regex) and a reward file reading the data's answer column."""
    folder = tmp_path_factory.mktemp("grpo")
    prompts = write_rows(folder / "prompts.jsonl",
                         [{"prompt": f"Pick a colour for box {i}:", "answer": "blue"} for i in range(64)])
    rewards = folder / "my_rewards.py"
    rewards.write_text(
        "def _words(text):\n"
        "    return text.split()\n\n"
        "def says_the_answer(completions, answer, **kwargs):\n"
        "    return [float(bool(_words(c)) and _words(c)[0] == a) for c, a in zip(completions, answer)]\n")
    result = train_tiny(grpo_config(colour_model, prompts, "grpo.rewards=[regex]",
                                    r"grpo.regex=^\s*blue", f"grpo.reward_file={rewards}",
                                    "grpo.reward_weights=[1.0, 0.5]", "grpo.beta=0.02", "train.max_steps=16",
                                    "train.learning_rate=5e-3"), folder / "runs")
    assert result.state == "completed" and result.step == 16
    return result.run_dir


def test_grpo_raises_the_reward_the_model_can_learn(blue_run):
    rewards = rewards_logged(blue_run)
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > first + 0.4, f"mean reward {first:.2f} -> {last:.2f}: {rewards}"
    logs = [e for e in events_of(blue_run) if e["kind"] == "log"]
    metrics = logs[-1]["extra"]["metrics"]
    assert all(e["tokens_per_second"] > 0 for e in logs), "the completions trained on are counted"
    assert {"rewards/regex/mean", "rewards/says_the_answer/mean", "completions/mean_length", "kl"} <= set(metrics)
    # Both rewards see the same completions: the weighted total is regex + 0.5 x says_the_answer.
    assert metrics["reward"] == pytest.approx(metrics["rewards/regex/mean"] + 0.5 * metrics["rewards/says_the_answer/mean"])
    samples = logs[-1]["extra"]["samples"]
    assert 1 <= len(samples) <= 3 and samples[0]["row"].startswith("prompts.jsonl:")
    assert set(samples[0]["rewards"]) == {"regex", "says_the_answer"} and len(samples[0]["completion"]) <= 241
    end = events_of(blue_run)[-1]
    assert end["extra"]["health"].startswith("The reward rose from"), end["extra"]["health"]
    checkpoint_log = json.loads((blue_run / "checkpoints" / "checkpoint-16" / "trainer_state.json").read_text())
    assert all("completion_samples" not in entry for entry in checkpoint_log["log_history"])


def test_the_exported_adapter_answers_as_trained(blue_run, colour_model):
    from peft import PeftModel

    from studio.config import ModelConfig
    from studio.export.exporting import export_run
    from studio.models import load_model

    result = export_run(blue_run, formats=("adapter",))
    adapter = result.out_dir / "tiny-adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    assert not (adapter / "ref").exists() and not (blue_run / "adapter" / "ref").exists(), "no KL reference copy"
    base, tokenizer = load_model(ModelConfig(name_or_path=str(colour_model)))
    model = PeftModel.from_pretrained(base, adapter).eval()
    ids = tokenizer("Pick a colour for box 101:", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=2, do_sample=False)
    assert tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip().startswith("blue")


def test_a_reward_that_never_varies_is_a_warning(tiny_llama, tmp_path):
    prompts = write_rows(tmp_path / "p.jsonl", [{"prompt": f"Say {i}."} for i in range(16)])
    rewards = tmp_path / "flat.py"
    rewards.write_text("def always_zero(completions, **kwargs):\n    return [0] * len(completions)\n")
    result = train_tiny(grpo_config(tiny_llama, prompts, "grpo.rewards=[]",
                                    f"grpo.reward_file={rewards}", "train.max_steps=3", "grpo.max_completion_length=2"),
                        tmp_path / "runs")
    warnings = [e["message"] for e in events_of(result.run_dir) if e["kind"] == "warning"]
    assert len(warnings) == 1 and warnings[0].startswith(
        "No learning signal: reward always_zero has been the same (0) for every completion since the start")
    assert "No learning signal" in result.health


def test_a_reward_function_that_fails_is_named_with_its_row(tiny_llama, tmp_path):
    from studio.errors import TrainingError
    from studio.runs import read_status

    prompts = write_rows(tmp_path / "p.jsonl", [{"prompt": f"Say {i}.", "n": i} for i in range(16)])
    rewards = tmp_path / "bad.py"
    rewards.write_text("def picky(completions, n, **kwargs):\n"
                       "    return [1.0 / (v - 5) for v in n]\n")
    with pytest.raises(TrainingError, match=r"Reward function picky \(.*bad\.py:1\) raised ZeroDivisionError: "
                                            r"float division by zero \(at .*bad\.py:2\), on row p\.jsonl:6"):
        train_tiny(grpo_config(tiny_llama, prompts, "grpo.rewards=[]",
                               f"grpo.reward_file={rewards}", "train.max_steps=2", "grpo.num_generations=2",
                               "train.batch_size=32", "grpo.max_completion_length=2"), tmp_path / "runs")
    (status,) = [read_status(p.parent) for p in (tmp_path / "runs").glob("*/config.yaml")]
    assert status["state"] == "failed" and "picky" in status["error"]


def test_reward_files_that_cannot_load_say_where(tmp_path):
    from studio.errors import ConfigError
    from studio.train.rewards import load_reward_file

    with pytest.raises(ConfigError, match="grpo.reward_file: .*nope.py does not exist"):
        load_reward_file(str(tmp_path / "nope.py"))
    cases = {
        "syntax.py": ("def f(completions, **kwargs):\n    return [1.0 for c in completions\n", r"syntax\.py:2: syntax error"),
        "crash.py": ("import math\nx = 1 / 0\n", r"crash\.py:2: the reward file failed as it ran: ZeroDivisionError"),
        "strict.py": ("def f(completions):\n    return [1.0]\n", r"strict\.py:1: reward function f takes completions but no \*\*kwargs"),
        "empty.py": ("def helper(text):\n    return text\n", r"empty\.py defines no reward function"),
    }
    for name, (source, message) in cases.items():
        (tmp_path / name).write_text(source)
        with pytest.raises(ConfigError, match=message):
            load_reward_file(str(tmp_path / name))
    (tmp_path / "ok.py").write_text("from math import sqrt\n\ndef _private(completions, **kw):\n    pass\n\n"
                                    "def b(completions, **kwargs):\n    return [0.0] * len(completions)\n\n"
                                    "def a(prompts, completions, **kwargs):\n    return [1.0] * len(completions)\n")
    assert [name for name, _ in load_reward_file(str(tmp_path / "ok.py"))] == ["b", "a"], "public, in file order"


def test_reward_answers_that_are_not_one_number_per_completion_are_named():
    from studio.errors import TrainingError
    from studio.train.rewards import RewardSet

    def returns(value):
        return lambda completions, **kwargs: value

    rows = {"file_line": ["data.jsonl:4", "data.jsonl:9"]}
    for value, message in [("1.0", r"Reward function f \(mine.py:3\) returned '1.0', not a list of numbers"),
                           ([1.0], r"f \(mine.py:3\) returned 1 rewards for 2 completions"),
                           ([1.0, "high"], r"f \(mine.py:3\) returned 'high' for completion 2 of row data.jsonl:9"),
                           ([float("nan"), 1], r"returned nan \(float\) for completion 1 of row data.jsonl:4")]:
        (fn,) = RewardSet([("f", returns(value), "mine.py:3")], [1.0], []).functions
        with pytest.raises(TrainingError, match=message):
            fn(prompts=["a", "b"], completions=["x", "y"], completion_ids=[[1], [2]], **rows)
    (fn,) = RewardSet([("f", returns([True, None]), "mine.py:3")], [1.0], ["<|im_end|>"]).functions
    assert fn(prompts=["a", "b"], completions=["x<|im_end|>", "y"], completion_ids=[[1], [2]], **rows) == [1.0, None]
    assert fn.owner.latest.completions == ["x", "y"], "an end-of-turn marker spelt as text is not part of the answer"


def test_presets_score_fixed_texts():
    from studio.train.rewards import answer_score, format_score, json_score, length_score, regex_score

    assert answer_score("The answer is 42.", "42") == 1.0
    assert answer_score("<think>6 x 7</think><answer>42.0</answer>", "42") == 1.0
    assert answer_score("<think>it is 41 or 42</think><answer>41</answer>", "42") == 0.0, "the tagged answer counts"
    assert answer_score("1,000 apples", 1000) == 1.0 and answer_score("about 1000.5", "1000") == 0.0
    assert answer_score("  paris. ", "Paris") == 1.0 and answer_score("Lyon", "Paris") == 0.0
    assert answer_score("anything", None) is None, "no answer in the row: the reward does not apply"
    assert format_score("<think>\nadd them\n</think>\n<answer>42</answer>\n") == 1.0
    assert format_score("<answer>42</answer>") == 0.0 and format_score("<think>a</think><answer>4</answer> more") == 0.0
    assert regex_score("Final: 12", r"Final: \d+$") == 1.0 and regex_score("Final: twelve", r"Final: \d+$") == 0.0
    schema = {"type": "object", "required": ["name", "age"],
              "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "tags": {"type": "array",
                                                                                         "items": {"enum": ["a", "b"]}}}}
    assert json_score('```json\n{"name": "Ann", "age": 3, "tags": ["a"]}\n```', schema) == 1.0
    assert json_score('{"name": "Ann", "age": 3.5}', schema) == 0.0 and json_score('{"name": "Ann"}', schema) == 0.0
    assert json_score('{"name": "Ann", "age": 3, "tags": ["c"]}', schema) == 0.0
    assert json_score("[1, 2]") == 1.0 and json_score("{'single': 'quotes'}") == 0.0
    assert [length_score(n, 4, 10) for n in (0, 2, 4, 10, 15, 20, 30)] == [0.0, 0.5, 1.0, 1.0, 0.5, 0.0, 0.0]
    assert length_score(500, 0, 0) == 1.0


def test_prompts_train_as_the_preview_shows_them(tiny_llama, tmp_path):
    from studio.config import DataConfig
    from studio.data.building import PROMPTS, build_dataset, to_hf_dataset
    from studio.data.preview import preview_dataset
    from studio.data.templates import resolve_template
    from studio.errors import ConfigError, DataError
    from studio.models import load_tokenizer
    from studio.train.methods import grpo
    from studio.train.training import load_for_training

    tok = load_tokenizer(str(tiny_llama))
    gemma = resolve_template("gemma", tok)  # writes BOS itself: the prompt must not get a second one
    p = preview_dataset(DataConfig(path=str(ARITHMETIC)), tok, gemma, 256, row=1, shape=PROMPTS, method="grpo")
    assert p.format == "prompts" and p.reward_columns == {"answer": "6"}
    assert p.text == "<s><start_of_turn>user\nWhat is 13 - 7?<end_of_turn>\n<start_of_turn>model\n"
    assert not any(trained for _, trained, _ in p.tokens) and [t for t, _, _ in p.tokens].count("<s>") == 1
    alpaca = build_dataset(DataConfig(path=str(ROOT / "assets" / "sample_instructions.jsonl")), tok, gemma, 256,
                           PROMPTS, "grpo").train[0]
    assert alpaca.text.endswith("<start_of_turn>model\n") and set(alpaca.columns) == {"answer"}
    with pytest.raises(DataError, match="holds prompts without responses: they train with train.method=grpo"):
        build_dataset(DataConfig(path=str(ARITHMETIC)), tok, gemma, 256)
    from studio.evaluate.rows import select_rows

    scored = select_rows(tmp_path, tiny_config(tiny_llama), tok, gemma, source=str(ARITHMETIC)).rows[0]
    assert scored.prompt == ({"role": "user", "content": "What is 14 + 5?"},) and scored.reference == "19"

    cfg = tiny_config(tiny_llama, "train.method=grpo", f"data.path={ARITHMETIC}", "grpo.beta=0.1",
                      "train.batch_size=4", "train.grad_accum=1")
    model, tokenizer = load_for_training(cfg)
    rows = build_dataset(cfg.data, tokenizer, gemma, 256, PROMPTS, "grpo").train[:4]
    trainer = grpo.make_trainer(cfg, tmp_path / "out", model, tokenizer, to_hf_dataset(rows, PROMPTS))
    ids, _, _ = trainer._tokenize_prompts([r.text for r in rows])
    assert ids == [r.prompt_ids for r in rows], "the prompt TRL generates from is the one the preview shows"
    assert "ref" not in trainer.model.peft_config, "the KL reference is the adapter switched off, not a copy"
    missing = tiny_config(tiny_llama, "train.method=grpo", "grpo.answer_column=solution",
                          "train.batch_size=4", "train.grad_accum=1")
    with pytest.raises(ConfigError, match=r"compares completions with the data column 'solution'.*its other "
                                        r"columns: answer"):
        grpo.make_trainer(missing, tmp_path / "out2", model, tokenizer, to_hf_dataset(rows, PROMPTS))


def test_grpo_settings_are_checked_with_what_to_change():
    from studio.config import RunConfig
    from studio.recipes import apply_overrides
    from studio.errors import ConfigError

    grpo = apply_overrides(RunConfig(), ["train.method=grpo"])
    assert (grpo.train.batch_size * grpo.train.grad_accum) % grpo.grpo.num_generations == 0, "defaults work"
    for overrides, message in [
        (["grpo.rewards=[]"], "grpo needs at least one reward"),
        (["train.batch_size=3", "train.grad_accum=1"], r"= 3 completions, which must be whole groups of "
                                                       r"grpo.num_generations=4.*train.batch_size=4"),
        (["grpo.num_generations=1"], "grpo.num_generations must be at least 2"),
        (["data.eval_fraction=0.1", "train.batch_size=2"], "with eval data, set train.batch_size to a multiple"),
        (["grpo.rewards=[regex]", "grpo.regex=(unclosed"], "grpo.regex '\\(unclosed' is not a valid pattern"),
        (["grpo.rewards=[length]"], "grpo.rewards has length: set grpo.length_min"),
        (["grpo.reward_weights=[1, 2]"], "2 weights for 1 rewards"),
        (["grpo.reward_file=data/rows.jsonl"], r"grpo.reward_file must be a Python file \(\.py\)"),
        (["lora.enabled=false", "grpo.beta=0.04"], "a second copy of the model"),
    ]:
        with pytest.raises(ConfigError, match=message):
            apply_overrides(grpo, overrides)


def test_the_fit_estimate_counts_the_completions():
    from studio.catalog import GEMMA_3_270M
    from studio.config import RunConfig
    from studio.recipes import apply_overrides
    from studio.fit import estimate_fit

    base = ["train.max_length=256", "train.batch_size=8", "train.grad_accum=4"]
    sft = estimate_fit(GEMMA_3_270M, apply_overrides(RunConfig(), base), 24, on_gpu=True)
    grpo = apply_overrides(RunConfig(), base + ["train.method=grpo", "grpo.max_completion_length=256"])
    short = estimate_fit(GEMMA_3_270M, grpo, 24, on_gpu=True)
    long = estimate_fit(GEMMA_3_270M, apply_overrides(grpo, ["grpo.max_completion_length=2048"]), 24, on_gpu=True)
    assert sft.activations_gib < short.activations_gib < long.activations_gib
    assert sft.weights_gib == short.weights_gib
