"""galore, prefix and ptuning on a tiny real model: each lowers the loss; a learned prompt exports as an adapter."""

from __future__ import annotations

import json

import pytest

from conftest import tiny_config, train_tiny


def losses(run_dir) -> list[float]:
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    return [e["loss"] for e in events if e["kind"] == "log"]


def test_galore_trains_every_weight_and_lowers_the_loss(tiny_llama, tmp_path):
    result = train_tiny(tiny_config(tiny_llama, "train.method=galore", "lora.enabled=false", "galore.rank=8",
                                    "galore.update_interval=4", "train.learning_rate=1e-3"), tmp_path)
    assert result.state == "completed" and (result.run_dir / "model").is_dir(), "full fine-tuning keeps a model/"
    curve = losses(result.run_dir)
    assert curve[-1] < curve[0] - 0.5, curve


@pytest.mark.parametrize("method", ["prefix", "ptuning"])
def test_a_learned_prompt_lowers_the_loss_and_exports_as_an_adapter_only(method, tiny_llama, tmp_path):
    from peft import PeftModel

    from studio.events import Event
    from studio.export.exporting import export_run
    from studio.models import load_trained
    from studio.runs import load_run_config

    result = train_tiny(tiny_config(tiny_llama, f"train.method={method}", "train.learning_rate=3e-2"), tmp_path)
    curve = losses(result.run_dir)
    assert curve[-1] < curve[0] - 0.2, curve

    said: list[Event] = []
    exported = export_run(result.run_dir, gguf_types=("q8_0",), formats=("merged_16bit",), sink=said.append)
    assert [f.name for f in exported.files] == ["tiny-adapter"] and not exported.reports
    assert any("No q8_0, merged_16bit" in e.message and "cannot be merged" in e.message for e in said)

    model, _ = load_trained(result.run_dir, load_run_config(result.run_dir).model)
    assert isinstance(model, PeftModel) and model.peft_config["default"].is_prompt_learning


def test_methods_refuse_settings_they_cannot_use(tiny_llama):
    from studio.errors import ConfigError

    with pytest.raises(ConfigError, match="galore trains every weight: set lora.enabled=false"):
        tiny_config(tiny_llama, "train.method=galore")
    with pytest.raises(ConfigError, match="cannot accumulate gradients: set train.grad_accum=1"):
        tiny_config(tiny_llama, "train.method=galore", "lora.enabled=false", "galore.layerwise=true",
                    "train.grad_accum=4")
    with pytest.raises(ConfigError, match="ptuning trains a small adapter in front of the model"):
        tiny_config(tiny_llama, "train.method=ptuning", "lora.enabled=false")
    with pytest.raises(ConfigError, match="train.packing packs sft rows; dpo"):
        tiny_config(tiny_llama, "train.method=dpo", "train.packing=true")
