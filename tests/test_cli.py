"""The headless commands, run as a user runs them: `python launch.py ...` in a child process."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SAMPLE_DATA

ROOT = Path(__file__).resolve().parent.parent


def launch(*args, cwd=ROOT, timeout=600):
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("command", ["train", "resume", "export", "chat", "runs", "eval", "share"])
def test_every_command_has_help(command):
    done = launch(command, "--help")
    assert done.returncode == 0 and "usage: launch.py " + command in done.stdout


def write_recipe(tmp_path, model, extra="", train_extra="") -> Path:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"name: cli\nmodel:\n  name_or_path: {model}\ndata:\n  path: {SAMPLE_DATA}\n  max_samples: 32\n"
        f"train:\n  max_steps: 4\n  batch_size: 4\n  grad_accum: 1\n  learning_rate: 3.0e-3\n  max_length: 128\n"
        f"  gradient_checkpointing: false\n{train_extra}{extra}"
    )
    return recipe


def test_bad_inputs_print_the_named_error_and_exit_2(tmp_path, tiny_llama):
    runs = ("--runs-dir", tmp_path / "runs")
    done = launch("train", write_recipe(tmp_path, tiny_llama, "lora:\n  rnak: 4\n"), *runs)
    assert done.returncode == 2 and "error: Unknown key 'lora.rnak'. Did you mean 'r'?" in done.stderr
    done = launch("train", write_recipe(tmp_path, tmp_path / "no-model"), *runs)
    assert done.returncode == 2 and "error: Model not found" in done.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\nnot json\n')
    done = launch("train", write_recipe(tmp_path, tiny_llama), f"data.path={bad}", *runs)
    assert done.returncode == 2 and "bad.jsonl:2: not valid JSON" in done.stderr
    done = launch("export", tmp_path / "nowhere")
    assert done.returncode == 2 and "No run found" in done.stderr


def test_train_chat_export_from_the_command_line(tmp_path, tiny_llama):
    # A recipe of an older version may still say where runs go: it trains, with a note, into --runs-dir.
    old_recipe = write_recipe(tmp_path, tiny_llama, train_extra=f"  runs_dir: {tmp_path / 'elsewhere'}\n")
    done = launch("train", old_recipe, "lora.r=4", "--runs-dir", tmp_path / "runs")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "step 4/4" in done.stdout and "completed at step 4" in done.stdout
    assert "note: " in done.stderr and "train.runs_dir is ignored" in done.stderr and "--runs-dir" in done.stderr
    run = next((tmp_path / "runs").iterdir())
    assert not (tmp_path / "elsewhere").exists()
    assert "r: 4" in (run / "config.yaml").read_text() and "runs_dir" not in (run / "config.yaml").read_text()

    done = launch("chat", run, "--compare", "--prompt", "What is the capital of Peru?", "generation.max_new_tokens=8")
    assert done.returncode == 0, done.stderr
    assert "[base] " in done.stdout and "[tuned] " in done.stdout

    done = launch("export", run, "--gguf", "q8_0")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASSED" in done.stdout and (run / "exports" / "cli-q8_0.gguf").is_file()

    done = launch("runs", "--runs-dir", tmp_path / "runs")
    assert "completed" in done.stdout


def test_core_does_not_import_gradio():
    code = ("import sys, studio.cli, studio.train.training, studio.export.exporting, studio.chat.session, studio.export.verify; "
            "sys.exit('gradio' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_data_command_prints_statistics_and_a_row(tmp_path, tiny_llama):
    data = tmp_path / "d.jsonl"
    rows = [{"instruction": "Say hi", "input": "", "output": "Hi!"}] * 2 + \
           [{"instruction": "Write a lot " * 30, "input": "", "output": "Done."}]
    data.write_text("".join(__import__("json").dumps(r) + "\n" for r in rows) + "{not json\n")
    done = launch("data", write_recipe(tmp_path, tiny_llama), f"data.path={data}", "train.max_length=160", "--row", "0")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Kept 3 of 4 rows (1 skipped) · format alpaca · template alpaca" in out
    assert "format alpaca detected from the columns" in out
    assert "\n  skipped d.jsonl:4: not valid JSON" in out
    assert "warning: Training would refuse this data: Too many malformed rows: 1 of 4" in out
    assert "max_length 160: 1 rows cut, 1 of them lose response tokens" in out
    assert "rows with nothing to learn: 1 · duplicate rows: 1" in out
    assert "<- cut at max_length" in out
    assert "[Hi!</s>]" in out, "trained tokens are bracketed, EOS included"


def test_data_command_previews_a_data_file_given_for_a_recipe(tmp_path, tiny_llama):
    data = tmp_path / "questions.csv"
    data.write_text("Question Text,Answer\nWhat is 2 plus 2?,4\n")
    done = launch("data", data, 'data.columns.instruction="Question Text"', "data.columns.output=Answer",
                  f"model.name_or_path={tiny_llama}")
    assert done.returncode == 0, done.stderr
    assert (f"{data} is a data file, not a recipe: previewed with model {tiny_llama} and template alpaca "
            "(the quickstart's model;") in done.stdout
    assert f"To train on it: python launch.py train recipes/quickstart.yaml data.path={data}" in done.stdout
    assert f"{data}: 1 rows · format alpaca · template alpaca · columns Question Text, Answer" in done.stdout
    assert "[4</s>]" in done.stdout


@pytest.mark.slow
def test_data_command_previews_a_data_file_with_the_quickstart_model(tmp_path):
    done = launch("data", SAMPLE_DATA)  # assembles the built-in model in this test's STUDIO_HOME (about a minute)
    assert done.returncode == 0, done.stderr
    assert "previewed with model builtin:gemma-3-270m and template alpaca" in done.stdout
    assert "sample_instructions.jsonl: 370 rows · format alpaca" in done.stdout


def test_overrides_work_after_a_list_option():
    """`eval RUN --models base tuned generation.max_new_tokens=8`: the override is no model name."""
    from studio.cli import build_parser
    from studio.cli_args import parse_args as parse_with

    def parse_args(argv):
        return parse_with(build_parser(), argv)

    args = parse_args(["eval", "RUN", "--models", "base", "tuned", "generation.max_new_tokens=8", "--limit", "4",
                       "generation.seed=2"])
    assert args.models == ["base", "tuned"] and args.limit == 4
    assert args.overrides == ["generation.max_new_tokens=8", "generation.seed=2"], "in the order typed"
    args = parse_args(["eval", "RUN", "generation.max_new_tokens=8", "--gguf", "runs/a=b/x.gguf", "generation.seed=2"])
    assert args.gguf == ["runs/a=b/x.gguf"] and args.overrides == ["generation.max_new_tokens=8", "generation.seed=2"]
    assert parse_args(["chat", "RUN", "--prompt", "x.y=1"]).prompt == "x.y=1", "an option's one value stays its own"
    assert parse_args(["export", "RUN", "--checkpoint", "checkpoint-40"]).checkpoint == "checkpoint-40"


def test_a_misplaced_override_is_a_clear_error():
    done = launch("export", "RUN", "--gguf", "q8_0", "generation.max_new_tokens=8")
    assert done.returncode == 2 and "unrecognized arguments: generation.max_new_tokens=8" in done.stderr
