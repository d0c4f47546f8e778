"""Real exports: merged weights, GGUF through llama.cpp's converter and quantizer, verified in llama-cpp-python."""

import json

import pytest

from studio.errors import DiskSpaceError
from studio.export.exporting import export_run
from studio.export.gguf import tensor_type_counts


@pytest.fixture(scope="module")
def exported(trained_run):
    return export_run(trained_run, gguf_types=("f16", "q8_0", "q4_k_m"),
                      formats=("adapter", "merged_16bit", "merged_4bit"))


def test_every_gguf_reproduces_the_trained_model(exported):
    """The 10-step run is stuck on one token: each file reproduces it, and the card warns about the training."""
    assert exported.passed and len(exported.reports) == 3
    for report in exported.reports:
        statuses = {c.name: c.status for c in report.checks}
        assert statuses == {"loads": "pass", "tensor types": "pass", "chat template": "pass", "eos": "pass",
                            "tokenizer": "pass", "greedy": "pass", "answers": "warn", "fine-tune": "pass"}, \
            report.summary()
        saved = json.loads(open(report.path.replace(".gguf", ".report.json")).read())
        assert saved["passed"] is True and saved["state"] == "warnings"
        assert saved["headline"] == "PASSED WITH WARNINGS: answers"


def test_f16_greedy_output_equals_the_hf_models(exported):
    f16 = next(r for r in exported.reports if r.gguf_type == "f16")
    for sample in f16.samples:
        assert sample.gguf == sample.hf and sample.matching_tokens == sample.of


def test_files_hold_the_types_asked_for(exported):
    out = exported.out_dir
    assert set(tensor_type_counts(out / "tiny-q4_k_m.gguf")) <= {"Q4_K", "Q6_K", "F32"}
    assert set(tensor_type_counts(out / "tiny-q8_0.gguf")) == {"Q8_0", "F32"}
    assert set(tensor_type_counts(out / "tiny-f16.gguf")) == {"F16", "F32"}
    assert (out / "tiny-q4_k_m.Modelfile").read_text().startswith("FROM ./tiny-q4_k_m.gguf")
    assert not (out / ".work").exists() and not list(out.glob("*.part"))


def test_the_quantizer_keeps_named_tensors_at_another_type(exported, tmp_path):
    from studio.export.gguf import quantize_gguf

    target = tmp_path / "q4_k_m-ffn-q8.gguf"
    quantize_gguf(exported.out_dir / "tiny-f16.gguf", target, "q4_k_m", {"ffn_.*": "Q8_0"})
    counts = tensor_type_counts(target)
    assert counts["Q8_0"] == 6 and counts["Q4_K"] + counts.get("Q6_K", 0) == 10, counts  # 3 MLP matrices x 2 layers


def test_merged_exports_load_and_hold_the_template(exported, trained_run):
    from studio.config import ModelConfig
    from studio.models import load_model

    out = exported.out_dir
    model, tokenizer = load_model(ModelConfig(name_or_path=str(out / "tiny-merged-16bit")))
    assert tokenizer.chat_template == (trained_run / "template.jinja").read_text()
    model4, _ = load_model(ModelConfig(name_or_path=str(out / "tiny-merged-4bit")))
    assert type(model4.model.layers[0].mlp.up_proj).__name__ == "Linear4bit"
    assert (out / "tiny-adapter" / "adapter_model.safetensors").is_file()


def test_qwen2_model_template_converts_and_verifies(tiny_qwen, tmp_path):
    from conftest import tiny_config, train_tiny

    run = train_tiny(tiny_config(tiny_qwen, "train.max_steps=2"), tmp_path).run_dir
    result = export_run(run, gguf_types=("f16",))
    assert result.passed, result.reports[0].summary()


def test_disk_preflight_refuses_before_writing(trained_run, monkeypatch, tmp_path):
    import shutil
    from collections import namedtuple

    run = shutil.copytree(trained_run, tmp_path / "run", ignore=shutil.ignore_patterns("exports", "evals"))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1000))
    with pytest.raises(DiskSpaceError,
                       match=r"about [\d.]+ MiB is needed, and a tenth more to spare; 1,000 bytes is free"):
        export_run(run, gguf_types=("q6_k",))
    assert not (run / "exports").exists(), "nothing is written when the exports cannot fit, not even the folder"


def test_bf16_and_other_k_quants_verify(trained_run):
    result = export_run(trained_run, gguf_types=("bf16", "q5_k_m", "q6_k"))
    assert [r.gguf_type for r in result.reports] == ["bf16", "q6_k", "q5_k_m"], "most precise first"
    assert all(r.passed for r in result.reports), "\n".join(r.summary() for r in result.reports)


def test_a_failed_conversion_leaves_nothing_that_looks_finished(tmp_path):
    """llama.cpp cannot convert OPT: the error is named and no GGUF or temporary file is left behind."""
    import torch
    from conftest import tiny_config, train_tiny
    from tiny import build_tokenizer
    from transformers import OPTConfig, OPTForCausalLM

    from studio.errors import ExportError

    tokenizer = build_tokenizer("llama")
    config = OPTConfig(vocab_size=len(tokenizer), hidden_size=64, ffn_dim=128, num_hidden_layers=1,
                       num_attention_heads=2, word_embed_proj_dim=64, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    OPTForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp_path / "opt")
    tokenizer.save_pretrained(tmp_path / "opt")
    run = train_tiny(tiny_config(tmp_path / "opt", "train.max_steps=1",
                                 "lora.target_modules=[q_proj,v_proj]"), tmp_path / "runs").run_dir
    with pytest.raises(ExportError, match="llama.cpp failed while converting"):
        export_run(run, gguf_types=("q4_k_m",))
    leftovers = [p.name for p in (run / "exports").glob("*")]  # pathlib's * matches .work too
    assert leftovers == [] and not (run / "exports").exists(), leftovers


def test_a_llama_cpp_that_crashes_on_this_machine_is_named_not_left_to_kill_the_studio(monkeypatch, tmp_path):
    """The probe's process dies of a real illegal instruction (SIGILL), as an unsuitable llama.cpp build does."""
    import studio.llama_check as llama_check
    from studio.errors import ModelLoadError

    monkeypatch.setattr(llama_check, "_answered", False)
    monkeypatch.setattr(llama_check, "PROBE", "import os, signal\nos.kill(os.getpid(), signal.SIGILL)\n")
    with pytest.raises(ModelLoadError, match=r"killed by SIGILL \(an illegal instruction.*scripts/setup.sh"):
        llama_check.check_llama_cpp_runs(tmp_path / "model.gguf")
    monkeypatch.setattr(llama_check, "PROBE", "raise SystemExit(1)\n")
    llama_check.check_llama_cpp_runs(tmp_path / "model.gguf")  # a Python failure: the caller's load reports it
    assert not llama_check._answered
