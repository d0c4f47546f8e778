"""Batch evaluation on the tiny models: batched answers, scores, the verdict, stop, saved results."""

import json
import math
import shutil
import threading

import pytest

from conftest import ROOT, SAMPLE_DATA, tiny_config, train_tiny


@pytest.fixture(scope="module")
def eval_run(trained_run, tmp_path_factory):
    """A copy of the shared trained run (so its exports and evals stay out of other tests' way), with a q8_0 GGUF."""
    from studio.export.exporting import export_run

    run_dir = tmp_path_factory.mktemp("eval-runs") / trained_run.name
    shutil.copytree(trained_run, run_dir)
    result = export_run(run_dir, ("q8_0",), ())
    assert result.passed
    return run_dir


@pytest.fixture(scope="module")
def base_gguf(tiny_llama, tmp_path_factory):
    """The tiny base model (never fine-tuned) as a q8_0 GGUF."""
    from studio.export.gguf import convert_to_gguf

    path = tmp_path_factory.mktemp("base-gguf") / "base-q8_0.gguf"
    convert_to_gguf(tiny_llama, path, "q8_0", "gpt-2")
    return path


def sample_rows(run_dir, n=12):
    from studio.evaluate.evaluation import run_tokenizer
    from studio.evaluate.rows import select_rows
    from studio.runs import load_run_config, read_template

    cfg = load_run_config(run_dir)
    tokenizer, template = run_tokenizer(run_dir, cfg), read_template(run_dir)
    return cfg, tokenizer, template, select_rows(run_dir, cfg, tokenizer, template, str(SAMPLE_DATA), limit=n).rows


def test_batched_greedy_equals_one_by_one_token_for_token(eval_run):
    from studio.evaluate.generate import generate_hf
    from studio.models import load_trained

    cfg, tokenizer, template, rows = sample_rows(eval_run, 8)
    model, _ = load_trained(eval_run, cfg.model)
    model.eval()
    batched = [o for batch in generate_hf(model, tokenizer, template, rows, cfg.generation, 4) for o in batch]
    single = [o for batch in generate_hf(model, tokenizer, template, rows, cfg.generation, 1) for o in batch]
    assert [o.token_ids for o in batched] == [o.token_ids for o in single]
    assert any(len(o.token_ids) > 1 for o in batched), "the rows produced real answers"
    assert len({len(r.prompt[-1]["content"]) for r in rows}) > 1, "prompts of different lengths (padding used)"


def test_gguf_queue_equals_fresh_one_by_one_generation(eval_run):
    """The scoring path (reference loss first, then the answer from the cached prompt) answers as a fresh start does."""
    from studio.evaluate.generate import generate_gguf, gguf_context, open_gguf_for_scoring, score_row_gguf

    cfg, tokenizer, template, rows = sample_rows(eval_run, 6)
    llm = open_gguf_for_scoring(next((eval_run / "exports").glob("*.gguf")),
                                gguf_context(tokenizer, template, rows, cfg.generation, cfg.train.max_length))
    try:
        queued = [score_row_gguf(llm, tokenizer, template, r, cfg.generation, cfg.train.max_length) for r in rows]
        fresh = []
        for row in rows:
            llm.reset()
            fresh.append(generate_gguf(llm, tokenizer, template, row, cfg.generation))
    finally:
        llm.close()
    assert [o.token_ids for o, _ in queued] == [o.token_ids for o in fresh]
    assert all(loss.tokens > 0 and math.isfinite(loss.nll) for _, loss in queued)


def test_scores_on_fixed_texts_equal_the_reference_values():
    from studio.evaluate.generate import Output, RowLoss
    from studio.evaluate.scores import corpus_bleu, model_scores, rouge_l

    # ROUGE-L: the longest common subsequence "the cat on the mat" is 5 of 6 words either way: F1 = 5/6.
    assert rouge_l("the cat is on the mat", "the cat sat on the mat") == pytest.approx(5 / 6)
    # BLEU by hand: n-gram precisions 5/6, 3/5, 2/4, 1/3, same length (no brevity penalty).
    assert corpus_bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(
        100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, abs=1e-6)
    outputs = [Output("Paris.", (1, 2), True), Output("the cat is on the mat and more", (3,) * 9, False)]
    scores = model_scores(outputs, [" paris. ", "the cat sat on the mat"], [RowLoss(2.0, 4), RowLoss(1.0, 1)])
    assert scores["exact_match"] == 0.5 and scores["stop_rate"] == 0.5
    assert scores["loss"] == pytest.approx(0.6) and scores["perplexity"] == pytest.approx(math.exp(0.6))
    assert scores["length_ratio"] == pytest.approx(9 / 7)


def test_user_checks_and_their_mistakes():
    from studio.errors import ConfigError
    from studio.evaluate.scores import parse_check

    assert parse_check(r"regex:^\d+$").passes("42", "")
    assert not parse_check("json").passes("{'a': 1}", "") and parse_check("json").passes('{"a": 1}', "")
    assert parse_check("contains").passes("The capital is Paris.", "paris")
    for bad in ("regex:(", "yaml", "regex"):
        with pytest.raises(ConfigError, match="regex:PATTERN|invalid"):
            parse_check(bad)


def test_scorecard_verdict_and_warnings_from_scores():
    from studio.evaluate.scorecard import ModelRow, build_scorecard

    models = [ModelRow("base", "base", None, 8, {"loss": 3.0, "stop_rate": 0.1}),
              ModelRow("fine-tuned", "tuned", None, 8, {"loss": 1.4, "stop_rate": 0.2}),
              ModelRow("checkpoint-5", "checkpoint", 5, 8, {"loss": 1.2, "stop_rate": 1.0}),
              ModelRow("checkpoint-10", "checkpoint", 10, 8, {"loss": 1.4, "stop_rate": 0.2}),
              ModelRow("q8.gguf", "gguf", None, 8, {"loss": 1.45, "stop_rate": 0.2}),
              ModelRow("base.gguf", "gguf", None, 8, {"loss": 2.9, "stop_rate": 0.1})]
    card = build_scorecard(models, "loss", curve=[(5, 1.2), (10, 1.4)])
    assert card.best == "checkpoint-5"
    text = " ".join(card.verdict + card.warnings)
    assert "beats the base model" in text and "Overfitting since step 5" in text
    assert "q8.gguf: loss 1.4500 (+0.05 against the fine-tuned model), keeps 97%" in text
    assert any(w.startswith("base.gguf lost most of the fine-tune's gain") for w in card.warnings)
    assert any(w.startswith("fine-tuned no longer stops") for w in card.warnings)
    assert not any(w.startswith("q8.gguf lost") for w in card.warnings)


def test_evaluation_scores_flags_a_base_gguf_and_reloads(eval_run, base_gguf):
    from studio.evaluate.evaluation import EvalSpec, run_evaluation
    from studio.evaluate.store import list_evals, load_eval, side_by_side

    tuned_gguf = next((eval_run / "exports").glob("*q8_0.gguf"))
    spec = EvalSpec(rows="train", limit=8, models=("base", "tuned", "checkpoints"), ggufs=(str(tuned_gguf), str(base_gguf)),
                    checks=("contains",), overrides=("generation.max_new_tokens=8",))
    result = run_evaluation(eval_run, spec)
    card = result.scorecard
    assert not card.partial and [m.name for m in card.models] == [
        "base", "fine-tuned", "checkpoint-5", "checkpoint-10", tuned_gguf.name, base_gguf.name]
    # Checkpoints are adapters switched on the same weights: the last one is the final adapter, the first is not.
    assert card.model("checkpoint-10").scores == card.model("fine-tuned").scores
    assert card.model("checkpoint-5").scores["loss"] != card.model("fine-tuned").scores["loss"]
    assert card.model("fine-tuned").scores["loss"] < card.model("base").scores["loss"]
    assert any(w.startswith(f"{base_gguf.name} lost most of the fine-tune's gain") for w in card.warnings), card.warnings
    assert not any(w.startswith(f"{tuned_gguf.name} lost") for w in card.warnings)
    # The GGUF computes the same loss as the HF model it was exported from (q8_0 rounding aside).
    assert card.model(tuned_gguf.name).scores["loss"] == pytest.approx(card.model("fine-tuned").scores["loss"], rel=0.05)
    assert card.model(base_gguf.name).scores["loss"] == pytest.approx(card.model("base").scores["loss"], rel=0.05)
    assert "check:contains" in card.model("base").scores

    assert list_evals(eval_run)[-1] == result.folder and not result.folder.name.endswith(".part")
    again = load_eval(result.folder)
    assert again.scorecard == card and len(again.outputs["fine-tuned"]) == 8
    header, rows = side_by_side(again, "differ")
    assert header[:3] == ["row", "input", "reference"] and 0 < len(rows) <= 8
    assert json.loads((eval_run / "evals" / "checks.json").read_text()) == ["contains"]


def test_stop_mid_evaluation_keeps_what_was_scored(eval_run):
    from studio.evaluate.evaluation import EvalSpec, run_evaluation
    from studio.evaluate.store import load_eval

    stop = threading.Event()

    def stop_after_first_batch(event):
        if event.kind == "log":
            stop.set()

    spec = EvalSpec(rows="train", limit=8, models=("base", "tuned"), batch_size=4, max_new_tokens=4)
    result = run_evaluation(eval_run, spec, stop_after_first_batch, stop)
    saved = load_eval(result.folder)
    assert saved.meta["generation"]["max_new_tokens"] == 4
    assert saved.partial and json.loads((result.folder / "scores.json").read_text())["partial"] is True
    assert [m.name for m in saved.scorecard.models] == ["base"] and saved.scorecard.models[0].rows == 4
    assert len(saved.outputs["base"]) == 4 and "stopped" in saved.scorecard.warnings[0]


def test_an_evaluation_waits_for_nobody_while_training_holds_the_run(eval_run):
    from studio.errors import RunBusyError
    from studio.evaluate.evaluation import EvalSpec, run_evaluation
    from studio.runs import lock_run

    with lock_run(eval_run, "training"):
        with pytest.raises(RunBusyError, match="in use: training"):
            run_evaluation(eval_run, EvalSpec(models=("tuned",)))


def test_a_run_without_eval_split_says_what_to_evaluate_on(eval_run):
    from studio.errors import DataError
    from studio.evaluate.evaluation import EvalSpec, run_evaluation

    with pytest.raises(DataError, match="no eval split.*--rows FILE"):
        run_evaluation(eval_run, EvalSpec(models=("tuned",)))


def test_an_evaluation_changes_generation_settings_only(eval_run):
    from studio.errors import ConfigError
    from studio.evaluate.evaluation import EvalSpec, run_evaluation

    with pytest.raises(ConfigError, match="'lora.r=8': an evaluation changes generation.* settings only"):
        run_evaluation(eval_run, EvalSpec(models=("tuned",), overrides=("lora.r=8",)))
    with pytest.raises(ConfigError, match="max_new_tokens must be 1 or more"):
        run_evaluation(eval_run, EvalSpec(models=("tuned",), max_new_tokens=-3))


def test_the_judge_counts_a_row_only_when_both_orders_agree():
    from studio.evaluate.judge import Judgement

    judged = Judgement("judge", "fine-tuned", "base",
                       [("first", "first"), ("first", "first"), ("second", "second"), ("first", "second")])
    assert (judged.first_wins, judged.second_wins, judged.split, judged.agreement) == (2, 1, 1, 0.75)
    assert judged.summary() == ("Judge judge: fine-tuned preferred on 2 of 4 rows, base on 1; 1 split (the choice "
                                "changed when the answers swapped places: agreement 75%).")
    assert judged.warning() is None
    position_only = Judgement("judge", "fine-tuned", "base", [("first", "second")] * 3)  # always "A"
    assert position_only.agreement == 0 and "mostly picks a position" in position_only.warning()


def test_a_judge_asks_both_orders_and_its_verdict_is_saved(eval_run, tiny_qwen):
    from studio.evaluate.evaluation import EvalSpec, run_evaluation

    spec = EvalSpec(rows="train", limit=4, models=("base", "tuned"), max_new_tokens=4, judge=str(tiny_qwen))
    result = run_evaluation(eval_run, spec)
    judged = result.meta["judge"]
    assert (judged["first"], judged["second"], len(judged["verdicts"])) == ("fine-tuned", "base", 4)
    assert judged["first_wins"] + judged["second_wins"] + judged["split"] == 4
    lines = [json.loads(line) for line in (result.folder / "judge.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and {"when_first_is_a", "when_second_is_a"} <= lines[0].keys()
    assert any(v.startswith("Judge qwen2: fine-tuned preferred on") for v in result.scorecard.verdict)
    assert (judged["agreement"] < 0.6) == any("mostly picks a position" in w for w in result.scorecard.warnings)


def test_a_judge_that_cannot_judge_is_refused_before_anything_is_generated(eval_run, tiny_llama, tiny_qwen):
    from studio.errors import ConfigError
    from studio.evaluate.evaluation import EvalSpec, run_evaluation

    before = set((eval_run / "evals").iterdir()) if (eval_run / "evals").is_dir() else set()
    with pytest.raises(ConfigError, match="judge must be a chat model.*no chat template"):
        run_evaluation(eval_run, EvalSpec(models=("base", "tuned"), rows="train", judge=str(tiny_llama)))
    with pytest.raises(ConfigError, match="compares two of the models evaluated \\(base, fine-tuned\\); 'gguf' is not"):
        run_evaluation(eval_run, EvalSpec(models=("base", "tuned"), rows="train", judge=str(tiny_qwen),
                                          judge_pair=("fine-tuned", "gguf")))
    after = set((eval_run / "evals").iterdir()) if (eval_run / "evals").is_dir() else set()
    assert after == before


@pytest.fixture(scope="module")
def overfit_run(tiny_llama, tmp_path_factory):
    """Full fine-tuning of 6 rows at a high learning rate: the eval loss is lowest at step 3, then rises."""
    cfg = tiny_config(tiny_llama, "name=overfit", "data.max_samples=8",
                      "data.eval_fraction=0.34", "lora.enabled=false", "train.max_steps=9", "train.learning_rate=1e-2",
                      "train.eval_steps=3", "train.save_steps=3", "train.save_total_limit=0")
    return train_tiny(cfg, tmp_path_factory.mktemp("overfit-runs")).run_dir


def test_the_best_checkpoint_of_a_run_whose_eval_loss_rises(overfit_run):
    from studio.evaluate.evaluation import EvalSpec, run_evaluation
    from studio.evaluate.scorecard import eval_curve

    curve = dict(eval_curve(overfit_run))
    lowest = min(curve, key=curve.get)
    assert lowest < max(curve) and curve[max(curve)] > curve[lowest] * 1.02, f"the eval loss rises: {curve}"
    card = run_evaluation(overfit_run, EvalSpec(models=("tuned", "checkpoints"),
                                                overrides=("generation.max_new_tokens=2",))).scorecard
    # The loss computed here on the eval split is the loss training logged at each checkpoint.
    for m in card.models:
        if m.kind == "checkpoint":
            assert m.scores["loss"] == pytest.approx(curve[m.step], rel=1e-3), m.name
    assert card.best == f"checkpoint-{lowest}"
    assert any(w.startswith(f"Overfitting since step {lowest}") for w in card.warnings)


def test_comparing_two_runs(trained_run, overfit_run):
    from studio.evaluate.compare import compare_runs

    found = compare_runs([trained_run, overfit_run])
    assert {run for run, *_ in found.curves} == {trained_run.name, overfit_run.name}
    assert {series for run, _, series, _ in found.curves if run == overfit_run.name} == {"loss", "eval loss"}
    assert found.differences["train.learning_rate"] == ["0.003", "0.01"]
    assert found.differences["data.eval_fraction"] == ["0.0", "0.34"]
    assert "name" in found.differences and "train.runs_dir" not in found.differences
    assert [f["state"] for f in found.finals] == ["completed", "completed"]
    assert found.finals[0]["eval loss"] is None and found.finals[1]["lowest eval loss"] > 0


def test_the_evaluate_tab_through_the_api(eval_run, tiny_qwen, tmp_path):
    import time

    from gradio_client import Client

    from studio.services import Studio
    from studio.ui.app import serve
    from test_ui import free_port

    twin = eval_run.parent / (eval_run.name + "-twin")
    shutil.copytree(eval_run, twin, ignore=shutil.ignore_patterns("evals", "exports", ".lock"))
    port = free_port()
    app = serve(Studio(runs_dir=eval_run.parent), port=port, block=False)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        choices = client.predict(api_name="/evaluation_runs")
        assert choices, "the tab lists the runs"
        notice = client.predict(api_name="/start_evaluation", run=str(eval_run), rows="train", limit=4,
                                models=["base", "tuned"], max_new=4, judge=str(tiny_qwen))[0]
        assert notice.startswith("Evaluating"), notice
        deadline = time.time() + 240
        while "Evaluating" in (status := client.predict(api_name="/evaluation_snapshot"))[0] and time.time() < deadline:
            time.sleep(0.5)
        assert status[0].startswith("✅ Done"), status[0]
        table = status[1]
        assert [row[0].rstrip(" ★") for row in table["data"]] == ["base", "fine-tuned"] and "rouge_l" in table["headers"]
        assert "beats the base model" in status[2] or "does not beat" in status[2]
        assert "Judge qwen2: fine-tuned preferred on" in status[2] and "of 4 rows" in status[2]

        saved = client.predict(str(eval_run), api_name="/saved_evaluations")
        folder = sorted(str(p) for p in (eval_run / "evals").iterdir() if p.is_dir())[-1]
        assert folder in str(saved), "the new evaluation is listed among the saved ones"
        scorecard, verdict, first, second = client.predict(folder, api_name="/show_evaluation")
        assert scorecard["data"][1][0].startswith("fine-tuned") and first["value"] == "fine-tuned"
        run_choice, checkpoint = client.predict(folder, api_name="/export_best")[:2]
        assert run_choice["value"] == str(eval_run) and checkpoint["value"] == "", "the final weights won"
        assert "checkpoint-5" in str(checkpoint["choices"])
        assert client.predict(str(eval_run), "checkpoint-10", api_name="/export_checkpoints")["value"] == "checkpoint-10"
        answers = client.predict(folder, "all", "fine-tuned", "base", api_name="/show_rows")
        assert answers["headers"][:3] == ["row", "input", "reference"] and len(answers["data"]) == 4

        loss, eval_loss, differences, finals = client.predict([str(eval_run), str(twin)], api_name="/compare_runs")
        assert {row[2] for row in loss["data"]} == {eval_run.name, twin.name}
        assert [row[0] for row in finals["data"]] == [eval_run.name, twin.name]
    finally:
        app.close()


def test_a_gguf_of_a_checkpoint_is_judged_against_that_checkpoint_and_the_verdict_names_the_export():
    from pathlib import Path

    from studio.evaluate.scorecard import ModelRow, build_scorecard, format_scorecard

    models = [ModelRow("base", "base", None, 8, {"loss": 3.0}), ModelRow("fine-tuned", "tuned", None, 8, {"loss": 2.0}),
              ModelRow("checkpoint-5", "checkpoint", 5, 8, {"loss": 1.0}),
              ModelRow("run-checkpoint-5-q8_0.gguf", "gguf", None, 8, {"loss": 1.1})]
    card = build_scorecard(models, "loss")
    assert "run-checkpoint-5-q8_0.gguf: loss 1.1000 (+0.1 against checkpoint-5), keeps 95% of" in " ".join(card.verdict)
    text = format_scorecard(card, Path("runs/20261127_my run"))
    assert ("verdict: Ship checkpoint-5: best loss among the fine-tuned weights (1.0000). Export it: "
            "python launch.py export 'runs/20261127_my run' --checkpoint checkpoint-5") in text
    final = build_scorecard(models[:2], "loss")
    assert format_scorecard(final, Path("runs/x")).count("Export it: python launch.py export runs/x\n") == 1


def test_exporting_a_checkpoint_names_it_and_scores_against_it(eval_run):
    from studio.errors import ExportError
    from studio.evaluate.evaluation import EvalSpec, run_evaluation
    from studio.export.exporting import export_run, run_checkpoints

    assert run_checkpoints(eval_run) == ["checkpoint-5", "checkpoint-10"]
    result = export_run(eval_run, ("q8_0",), ("adapter",), checkpoint="checkpoint-5")
    out = eval_run / "exports"
    assert result.passed and out / "tiny-checkpoint-5-q8_0.gguf" in result.files
    adapter = out / "tiny-checkpoint-5-adapter"
    assert (adapter / "adapter_model.safetensors").read_bytes() == \
        (eval_run / "checkpoints" / "checkpoint-5" / "adapter_model.safetensors").read_bytes()
    assert not (adapter / "optimizer.pt").exists() and not (adapter / "training_args.bin").exists()
    assert (out / "tiny-checkpoint-5-q8_0.report.json").is_file() and (out / "tiny-q8_0.gguf").is_file()
    with pytest.raises(ExportError, match="has no 'checkpoint-7'. Its checkpoints: checkpoint-5, checkpoint-10"):
        export_run(eval_run, ("q8_0",), (), checkpoint="checkpoint-7")

    spec = EvalSpec(rows="train", limit=4, models=("base", "checkpoints"), ggufs=(str(out / "tiny-checkpoint-5-q8_0.gguf"),),
                    overrides=("generation.max_new_tokens=4",))
    card = run_evaluation(eval_run, spec).scorecard
    line = next(v for v in card.verdict if v.startswith("tiny-checkpoint-5-q8_0.gguf"))
    assert "against checkpoint-5" in line, line


KILLED_EVALUATION = """
import sys, time
from pathlib import Path
from studio.evaluate.evaluation import EvalSpec, run_evaluation

def sink(event):
    if event.kind == "log":  # the first batch is answered: the .part folder exists and holds rows
        print("ANSWERING", flush=True)
        time.sleep(600)

run_evaluation(Path(sys.argv[1]), EvalSpec(rows="train", limit=4, models=("tuned",), batch_size=1,
                                           overrides=("generation.max_new_tokens=2",)), sink)
"""


def test_an_evaluation_killed_outright_leaves_a_part_folder_that_is_cleaned(eval_run):
    import signal
    import subprocess
    import sys

    from studio.events import MemorySink
    from studio.evaluate.evaluation import EvalSpec, run_evaluation
    from studio.evaluate.store import list_evals
    from studio.runs import lock_holder, lock_run

    before = list_evals(eval_run)
    child = subprocess.Popen([sys.executable, "-c", KILLED_EVALUATION, str(eval_run)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen = []
        for line in child.stdout:
            if "ANSWERING" in line:
                break
            seen.append(line)
        assert child.poll() is None, "the evaluation ended before it was killed:\n" + "".join(seen)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    parts = list((eval_run / "evals").glob("*.part"))
    assert len(parts) == 1 and (parts[0] / "rows.jsonl").is_file(), "kill -9 leaves the folder half-written"
    assert lock_holder(eval_run) is None, "the system released the dead process's lock"

    sink = MemorySink()
    result = run_evaluation(eval_run, EvalSpec(rows="train", limit=2, models=("tuned",),
                                               overrides=("generation.max_new_tokens=2",)), sink)
    assert not parts[0].exists(), "the next evaluation removed it"
    assert any(e.message == f"Removed {parts[0].name}: what an evaluation that was killed had left" for e in sink.events())
    assert list_evals(eval_run) == [*before, result.folder]

    stale = eval_run / "evals" / "20200101-000000.part"
    stale.mkdir()
    with lock_run(eval_run, "evaluation"):  # a live evaluation's folder is left alone
        assert list_evals(eval_run) == [*before, result.folder] and stale.is_dir()
    assert list_evals(eval_run) == [*before, result.folder] and not stale.exists(), "a listing cleans it too"
