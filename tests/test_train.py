"""Real training through TRL on tiny models: weights change, events are written, stop and resume work."""

import json
import threading
from pathlib import Path

import pytest
from conftest import tiny_config, train_tiny

from studio.errors import ConfigError, DataError
from studio.events import read_events
from studio.train.checkpoints import latest_checkpoint
from studio.runs import read_status

ROOT = Path(__file__).resolve().parent.parent


def adapter_tensors(run_dir):
    from safetensors.torch import load_file

    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def test_lora_run_changes_the_adapter_and_writes_events(trained_run):
    tensors = adapter_tensors(trained_run)
    lora_b = [t for name, t in tensors.items() if "lora_B" in name]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b), "lora_B starts at zero; training must move it"

    events = read_events(trained_run / "events.jsonl")
    logs = [e for e in events if e.kind == "log"]
    assert [e.step for e in logs] == list(range(1, 11))
    for e in logs:
        assert e.loss > 0 and e.learning_rate is not None and e.grad_norm is not None
        assert e.tokens_per_second > 0 and e.elapsed_s >= 0 and e.eta_s is not None and e.epoch > 0
        assert e.memory["process_rss"] > 0 and e.memory["ram_total"] > 0
    assert logs[-1].loss < logs[0].loss
    assert events[-1].kind == "end" and events[-1].extra["state"] == "completed"

    assert read_status(trained_run)["state"] == "completed"
    assert (trained_run / "config.yaml").is_file() and (trained_run / "template.jinja").is_file()
    assert latest_checkpoint(trained_run).name == "checkpoint-10"
    saved_template = json.loads((trained_run / "adapter" / "tokenizer_config.json").read_text()).get("chat_template")
    assert saved_template is None or saved_template == (trained_run / "template.jinja").read_text()


def test_stop_saves_a_checkpoint_and_resume_continues_from_it(tiny_llama, tmp_path):
    from studio.events import JsonlSink
    from studio.train.training import run_training

    stop = threading.Event()

    def stop_at_step_3(event):  # as if the user pressed Stop while step 3's numbers were shown
        if event.kind == "log" and event.step == 3:
            stop.set()

    result = train_tiny(tiny_config(tiny_llama, "train.save_steps=100"), tmp_path, stop=stop, sink=stop_at_step_3)
    run_dir = result.run_dir
    assert (result.state, result.step) == ("stopped", 3)
    assert read_status(run_dir)["state"] == "stopped"
    assert latest_checkpoint(run_dir).name == "checkpoint-3"
    assert (run_dir / "adapter").is_dir(), "a stopped run keeps what it learned so far"

    resumed = run_training(run_dir, JsonlSink(run_dir / "events.jsonl"), threading.Event(), resume=True)
    assert (resumed.state, resumed.step) == ("completed", 10)
    logs = [e for e in read_events(run_dir / "events.jsonl") if e.kind == "log"]
    assert [e.step for e in logs] == list(range(1, 11)), "resume continues at step 4, it does not start over"
    optimizer_state = latest_checkpoint(run_dir) / "optimizer.pt"
    assert optimizer_state.is_file()


def test_full_finetuning_trains_all_weights(tiny_llama, tmp_path):
    result = train_tiny(tiny_config(tiny_llama, "lora.enabled=false", "train.max_steps=2",
                                    "train.learning_rate=1e-4"), tmp_path)
    assert (result.run_dir / "model" / "model.safetensors").is_file()
    assert not (result.run_dir / "adapter").exists()


def test_qlora_on_a_4bit_base_trains_on_cpu(tiny_llama, tmp_path):
    result = train_tiny(tiny_config(tiny_llama, "model.load_in=4bit", "train.max_steps=2"), tmp_path)
    assert result.state == "completed" and (result.run_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_bad_inputs_fail_with_named_errors_and_a_failed_status(tiny_llama, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        train_tiny(tiny_config(tiny_llama, f"data.path={bad}"), tmp_path)
    with pytest.raises(ConfigError, match="no module named wq_proj"):
        train_tiny(tiny_config(tiny_llama, "lora.target_modules=[wq_proj]"), tmp_path)
    with pytest.raises(ConfigError, match="full fine-tuning needs 16-bit weights"):
        train_tiny(tiny_config(tiny_llama, "lora.enabled=false", "model.load_in=4bit"), tmp_path)
    states = {read_status(p.parent)["state"] for p in tmp_path.glob("*/config.yaml")}
    assert states == {"failed"}


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_trains_on_a_tiny_model(recipe, tiny_qwen, tmp_path):
    """Each recipe as written, with only the model swapped for a tiny one and the run cut short."""
    from studio.recipes import load_recipe
    from studio.events import MemorySink
    from studio.runs import create_run_dir
    from studio.train.training import run_training

    cfg = load_recipe(recipe, [f"model.name_or_path={tiny_qwen}", "train.max_steps=2", "data.max_samples=16",
                               "train.max_length=128", "grpo.max_completion_length=16"])
    result = run_training(create_run_dir(cfg, tmp_path), MemorySink(), threading.Event())
    assert result.state == "completed" and result.step == 2


def test_eval_split_reports_eval_loss_and_packing_trains(tiny_llama, tmp_path):
    result = train_tiny(tiny_config(tiny_llama, "data.eval_fraction=0.25", "train.eval_steps=5",
                                    "train.packing=true", "train.max_steps=5"), tmp_path)
    evals = [e for e in read_events(result.run_dir / "events.jsonl") if e.kind == "eval"]
    assert evals and evals[0].step == 5 and evals[0].eval_loss > 0


def test_scoring_only_trained_positions_keeps_loss_and_gradients(tiny_llama):
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from studio.speed.patches import scoring_only_trained_positions

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    add_fused_lm_head(model)
    torch.manual_seed(0)
    input_ids = torch.randint(3, 1000, (2, 24))
    labels = input_ids.clone()
    labels[:, :15] = -100  # a masked prompt, as in instruction data

    def loss_and_grad():
        model.zero_grad()
        loss = model(input_ids=input_ids, labels=labels, fused_lm_head=True).loss
        loss.backward()
        return loss.item(), model.lm_head.weight.grad.clone()

    every_position = loss_and_grad()
    with scoring_only_trained_positions():
        trained_only = loss_and_grad()
    assert abs(every_position[0] - trained_only[0]) < 1e-5
    assert torch.allclose(every_position[1], trained_only[1], atol=1e-6)


def test_trained_tokens_count_what_training_sees_and_nothing_else(tiny_llama):
    import torch
    from transformers import AutoModelForCausalLM

    from studio.train.callbacks import TrainedTokens

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    tokens = TrainedTokens(model)
    ids = torch.randint(3, 50, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])  # one row padded by 2
    model.train()
    model(input_ids=ids, attention_mask=mask)
    model(ids)  # packed rows: no mask, no padding
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)  # a reference model's scores, a generation
    model.eval()
    model(input_ids=ids, attention_mask=mask)  # evaluation
    assert tokens.take() == 10 + 12
    assert tokens.take() == 0, "each take starts a new count"
    tokens.close()
    model.train()
    model(ids)
    assert tokens.take() == 0, "closed: the hook is off the model"


def test_time_left_is_reckoned_at_the_pace_after_the_first_log():
    import threading

    from studio.train.callbacks import ProgressCallback

    progress = ProgressCallback(sink=lambda event: None, stop=threading.Event(), probe=None, tokens=None)
    progress.started_at, progress.first_step = 100.0, 0
    # The first step compiled layers for 14 s; the ones after take 0.3 s each.
    assert progress._seconds_left(1, 11, now=114.0) == pytest.approx(140.0)  # all there is to go by yet
    assert progress._seconds_left(2, 11, now=114.3) == pytest.approx(2.7)
    assert progress._seconds_left(6, 11, now=115.5) == pytest.approx(1.5)
    assert progress._seconds_left(11, 11, now=117.0) == 0
