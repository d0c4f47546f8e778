"""The GGUF report card cannot be fooled: NaN weights, a base model passed off as the fine-tune, broken answers.

Real runs on the tiny Llama, real llama.cpp conversion and verification. The shared `trained_run` (10 LoRA
steps) answers "The is is is ..." (a stuck model, exported faithfully); `fluent_run` fine-tunes all weights
for 40 steps so its answers differ from the base model's without being stuck.
"""

import json
import shutil

import pytest

from studio.errors import ExportError
from studio.export.exporting import closest_type_that_kept, export_run
from studio.export.gguf import convert_to_gguf
from studio.export.references import reference_answers
from studio.runs import load_run_config, read_template
from studio.export.verify import GgufReport, verify_gguf


@pytest.fixture(scope="module")
def fluent_run(tiny_llama, tmp_path_factory):
    from conftest import tiny_config, train_tiny

    cfg = tiny_config(tiny_llama, "name=fluent", "lora.enabled=false",
                      "train.max_steps=40", "train.learning_rate=1e-3", "train.save_steps=40")
    return train_tiny(cfg, tmp_path_factory.mktemp("fluent")).run_dir


@pytest.fixture(scope="module")
def fluent_references(fluent_run):
    """The fluent run's fine-tuned (its model/ folder) and base answers on the card's prompts."""
    return reference_answers(load_run_config(fluent_run), fluent_run / "model", read_template(fluent_run), 16)


@pytest.fixture(scope="module")
def fluent_export(fluent_run):
    return export_run(fluent_run, gguf_types=("f16",))


def _gguf_of(model_dir, template, target, change=None):
    """An f16 GGUF of `model_dir` with the run's template embedded, after `change(model)` when given."""
    from studio.config import ModelConfig
    from studio.models import load_model

    model, tokenizer = load_model(ModelConfig(name_or_path=str(model_dir)))
    if change:
        change(model)
    tokenizer.chat_template = template.jinja
    folder = target.with_suffix("")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    convert_to_gguf(folder, target, "f16")
    return target


def test_nan_weights_are_refused_before_anything_is_written(trained_run, tmp_path):
    from safetensors.torch import load_file, save_file

    run = shutil.copytree(trained_run, tmp_path / trained_run.name, ignore=shutil.ignore_patterns("exports"))
    weights = run / "adapter" / "adapter_model.safetensors"
    tensors = load_file(weights)
    for name in [n for n in tensors if "lora_B" in n][:4]:
        tensors[name].fill_(float("nan"))
    save_file(tensors, weights)

    with pytest.raises(ExportError) as refused:
        export_run(run, gguf_types=("q8_0",), formats=("merged_16bit",))
    message = str(refused.value)
    assert "NaN or Inf" in message and "diverged" in message and "learning_rate" in message
    assert "earlier checkpoint" in message and "model.layers." in message and "more" in message
    assert not list((run / "exports").glob("*")), "nothing is written for a diverged run"


def test_a_fine_tune_that_survives_passes(fluent_run, fluent_export):
    report = fluent_export.reports[0]
    assert report.state == "passed", report.summary()
    assert all(s.informative for s in report.samples), "the fine-tune changes every answer"
    assert len(report.samples) > 3 and report.samples[-1].source.startswith("sample_instructions.jsonl:")
    saved = json.loads((fluent_run / "exports" / "fluent-f16.report.json").read_text())
    assert (saved["state"], saved["headline"], saved["passed"]) == ("passed", "PASSED", True)
    assert saved["samples"][-1]["source"] == report.samples[-1].source


def test_a_gguf_of_the_base_model_is_not_taken_for_the_fine_tune(fluent_run, fluent_references, tiny_llama, tmp_path):
    template = read_template(fluent_run)
    base_gguf = _gguf_of(tiny_llama, template, tmp_path / "base.gguf")
    report = verify_gguf(base_gguf, "f16", fluent_references, fluent_references.tokenizer, template)
    checks = {c.name: c for c in report.checks}
    assert checks["fine-tune"].status == "fail" and "the base model on 9" in checks["fine-tune"].detail
    assert checks["answers"].status == "pass" and checks["chat template"].status == "pass"
    assert report.state == "failed" and report.headline.startswith("FAILED: fine-tune lost at this quantization")
    assert report.to_dict()["state"] == "failed" and report.to_dict()["passed"] is False


def test_a_gguf_that_answers_nothing_fails_and_blames_the_file(fluent_run, fluent_references, tmp_path):
    """A zeroed output head: every next token ties, llama.cpp emits token 0 (<s>) and the text is empty."""
    template = read_template(fluent_run)
    broken = _gguf_of(fluent_run / "model", template, tmp_path / "broken.gguf",
                      change=lambda model: model.lm_head.weight.data.zero_())
    report = verify_gguf(broken, "f16", fluent_references, fluent_references.tokenizer, template)
    answers = next(c for c in report.checks if c.name == "answers")
    assert answers.status == "fail" and "empty" in answers.detail and "the file is broken" in answers.detail
    assert report.state == "failed" and not report.fine_tune_lost and "answers" in report.headline


def test_a_stuck_model_exported_faithfully_warns_that_the_training_broke_it(trained_run):
    report = export_run(trained_run, gguf_types=("q8_0",)).reports[0]
    answers = next(c for c in report.checks if c.name == "answers")
    assert answers.status == "warn" and "the training broke the model, not the export" in answers.detail
    assert report.state == "warnings" and report.headline == "PASSED WITH WARNINGS: answers"
    assert report.passed and (trained_run / "exports" / "tiny-q8_0.gguf").is_file()


def test_a_lost_fine_tune_names_the_closest_type_that_kept_it():
    def report(gguf_type, status):
        return GgufReport(f"x-{gguf_type}.gguf", gguf_type, 1, checks=[_check("fine-tune", status)])

    measured = [report("q8_0", "pass"), report("q6_k", "warn"), report("q5_k_m", "fail")]
    assert closest_type_that_kept("q4_k_m", measured) == "q6_k"
    assert closest_type_that_kept("q4_k_m", []) == "q8_0" and closest_type_that_kept("q8_0", []) == "f16"
    lost = report("q4_k_m", "fail")
    lost.use_instead = "q6_k"
    assert lost.headline == "FAILED: fine-tune lost at this quantization (q4_k_m): export q6_k instead"


def test_the_export_tab_shows_the_headline_first_coloured_by_state(fluent_export):
    from dataclasses import replace

    from studio.export.verify import Check
    from studio.ui.export_tab import report_card

    report = fluent_export.reports[0]
    passed = replace(report, checks=[Check(c.name, "pass", c.detail) for c in report.checks])
    lost = replace(passed, checks=[Check(c.name, "fail" if c.name == "fine-tune" else "pass", c.detail)
                                   for c in report.checks])
    for shown, headline, colour in ((passed, "PASSED", "#dcfce7"), (lost, "FAILED: fine-tune lost", "#fee2e2")):
        card = report_card(shown)
        assert card.startswith('<div class="report-headline') and colour in card.split("</div>")[0]
        assert headline in card.split("</div>")[0]
    assert "| base (HF) |" in card and report.samples[0].prompt[:20] in card


def _check(name, status):
    from studio.export.verify import Check

    return Check(name, status, "")
