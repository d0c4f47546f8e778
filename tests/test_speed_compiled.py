"""Compiled decoder layers (train.compile_layers): the same training, the same memory kept by checkpointing.

torch.compile runs on the CPU too (inductor's C++ backend), so these check the
compiled path itself; its speed is a GPU matter (results/).
"""

import pytest
import torch
from conftest import tiny_config, train_tiny

from studio.errors import ConfigError
from studio.events import read_events


def _losses(run_dir):
    return [e.loss for e in read_events(run_dir / "events.jsonl") if e.kind == "log"]


@pytest.mark.parametrize("load_in", ["16bit", "4bit"])
def test_compiled_layers_train_to_the_same_losses(load_in, tiny_llama, tmp_path):
    overrides = ("train.max_steps=4", "train.gradient_checkpointing=true", "lora.dropout=0", "train.fused_lora=true",
                 f"model.load_in={load_in}")
    eager = train_tiny(tiny_config(tiny_llama, *overrides), tmp_path / "eager")
    compiled = train_tiny(tiny_config(tiny_llama, *overrides, "train.compile_layers=true"), tmp_path / "compiled")
    assert compiled.state == eager.state == "completed"
    assert _losses(compiled.run_dir) == pytest.approx(_losses(eager.run_dir), rel=1e-4)
    stages = [e.message for e in read_events(compiled.run_dir / "events.jsonl") if e.kind == "stage"]
    assert "Compiled decoder layers: 2 (torch.compile; the first steps include compiling them)." in stages


def test_compiled_layers_stay_compiled_through_evaluation_and_a_reference_model(tiny_llama, tmp_path, monkeypatch):
    import torch._dynamo.config as dynamo

    from test_methods_preference import preference_config

    monkeypatch.setattr(dynamo, "fail_on_recompile_limit_hit", True)  # an error instead of running uncompiled
    cfg = preference_config(tiny_llama, "dpo", "train.max_steps=4", "train.compile_layers=true",
                            "train.gradient_checkpointing=true", "data.eval_fraction=0.25", "train.eval_steps=2")
    result = train_tiny(cfg, tmp_path)
    assert result.state == "completed" and result.step == 4
    events = read_events(result.run_dir / "events.jsonl")
    assert [e.step for e in events if e.kind == "eval"] == [2, 4]


def _kept_for_backward(model, ids) -> int:
    """Bytes of the tensors a forward pass keeps for backward, weights left out (they are held anyway)."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    return sum(kept.values())


def test_checkpointing_keeps_only_each_layers_input_when_the_layers_are_compiled(tiny_llama):
    from studio.recipes import from_dict
    from studio.train.training import load_for_training

    def model(compile_layers: bool, checkpointing: bool = True):
        cfg = from_dict({"model": {"name_or_path": str(tiny_llama)}, "lora": {"dropout": 0.0},
                         "train": {"compile_layers": compile_layers, "fused_lora": True}})
        loaded, _ = load_for_training(cfg)
        if checkpointing:
            loaded.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            loaded.enable_input_require_grads()
        return loaded.train()

    import torch._dynamo.utils as dynamo

    ids = torch.randint(3, 100, (2, 64), generator=torch.Generator().manual_seed(0))
    everything = _kept_for_backward(model(False, checkpointing=False), ids)
    checkpointed = _kept_for_backward(model(False), ids)
    dynamo.counters.clear()
    compiled = _kept_for_backward(model(True), ids)
    assert dynamo.counters["aot_autograd"]["ok"] >= 1, "the layers ran compiled, forward and backward"
    assert not dynamo.counters["graph_break"], dict(dynamo.counters["graph_break"])
    assert checkpointed < everything / 2
    assert compiled <= checkpointed * 1.1, f"compiled layers keep {compiled} bytes, eager ones {checkpointed}"


@pytest.mark.parametrize("setting, expected", [
    ("model.load_in=8bit", "model.load_in=8bit: 8-bit weights are not compiled yet"),
    ("train.kernels=liger", "train.kernels=liger: Liger's kernels keep torch.compile out of the layers"),
    ("train.method=prefix", "train.method=prefix: prefix tuning hands each layer"),
])
def test_compiled_layers_refuse_what_they_cannot_run(tiny_llama, setting, expected):
    with pytest.raises(ConfigError, match=f"train.compile_layers cannot be used with {expected}"):
        tiny_config(tiny_llama, "train.compile_layers=true", setting)


def test_compiled_layers_turn_liger_off_under_auto(monkeypatch):
    import studio.speed.compiled as compiled
    import studio.speed.patches as patches
    from studio.recipes import from_dict

    # The choice of trainer options as on a CUDA machine with Liger installed.
    monkeypatch.setattr(patches, "has_cuda", lambda: True)
    monkeypatch.setattr(compiled, "has_cuda", lambda: True)
    monkeypatch.setattr(patches, "liger_available", lambda: True)
    monkeypatch.setattr(compiled, "what_compiling_lacks", lambda: None)
    assert patches.cuda_speedups(from_dict({"train": {"compile_layers": False}}))["use_liger_kernel"]
    assert "use_liger_kernel" not in patches.cuda_speedups(from_dict({"train": {"compile_layers": True}}))
    assert "use_liger_kernel" not in patches.cuda_speedups(from_dict({}))  # auto compiles here
    assert patches.cuda_speedups(from_dict({"model": {"load_in": "8bit"}}))["use_liger_kernel"]


def test_auto_compiles_with_cuda_where_compiling_can_run(monkeypatch):
    import studio.speed.compiled as compiled
    from studio.recipes import from_dict

    notes = []
    auto = from_dict({})
    assert auto.train.compile_layers == "auto"
    monkeypatch.setattr(compiled, "has_cuda", lambda: False)
    assert not compiled.compiles_layers(auto, notes.append)  # the CPU: nothing to gain
    monkeypatch.setattr(compiled, "has_cuda", lambda: True)
    monkeypatch.setattr(compiled, "what_compiling_lacks", lambda: None)
    assert compiled.compiles_layers(auto, notes.append)
    for cannot in ({"model": {"load_in": "8bit"}}, {"train": {"kernels": "liger"}}, {"train": {"compile_layers": False}}):
        assert not compiled.compiles_layers(from_dict(cannot), notes.append), cannot
    with monkeypatch.context() as sharded:
        sharded.setenv("WORLD_SIZE", "2")
        sharded.setenv("STUDIO_PARALLEL", "fsdp")
        assert not compiled.compiles_layers(auto, notes.append)
    assert notes == []
    long_rows = from_dict({"train": {"max_length": 16384, "feed_forward_slice": 8192}})
    assert not compiled.compiles_layers(long_rows, notes.append)
    assert notes.pop() == ("Compiled decoder layers off: rows up to 16384 tokens run their feed-forward blocks in "
                           "slices of 8192 (train.feed_forward_slice), which are not compiled.")
    assert compiled.compiles_layers(from_dict({"train": {"max_length": 16384, "feed_forward_slice": 0}}))
    monkeypatch.setattr(compiled, "what_compiling_lacks", lambda: "no C compiler found (install gcc)")
    assert not compiled.compiles_layers(auto, notes.append)
    assert notes == ["Compiled decoder layers off: no C compiler found (install gcc). Training runs uncompiled "
                     "(~15% slower on a GPU)."]


def test_what_compiling_lacks_names_a_missing_c_compiler(monkeypatch):
    import importlib.util

    import studio.speed.compiled as compiled

    monkeypatch.setattr(compiled.sys, "platform", "linux")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())  # Triton there
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(compiled.shutil, "which", lambda name: None)
    assert "no C compiler found" in compiled.what_compiling_lacks()
    monkeypatch.setenv("CC", "/usr/bin/gcc")
    assert compiled.what_compiling_lacks() is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("load_in", ["16bit", "4bit"])
def test_compiled_layers_match_eager_ones_on_cuda_in_bf16(load_in, tiny_llama):
    import torch._dynamo.utils as dynamo

    from studio.recipes import from_dict
    from studio.train.training import load_for_training

    def loss_and_gradients(compile_layers: bool):
        cfg = from_dict({"model": {"name_or_path": str(tiny_llama), "load_in": load_in}, "lora": {"dropout": 0.0},
                         "train": {"compile_layers": compile_layers, "fused_lora": True}})
        model, _ = load_for_training(cfg)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
        model.train()
        ids = torch.randint(3, 100, (2, 256), generator=torch.Generator().manual_seed(0)).to(model.device)
        before = torch.cuda.memory_allocated()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        kept = torch.cuda.memory_allocated() - before
        loss.backward()
        gradients = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
        return loss.item(), gradients, kept

    loss, gradients, kept = loss_and_gradients(False)
    dynamo.counters.clear()
    compiled_loss, compiled_gradients, compiled_kept = loss_and_gradients(True)
    assert dynamo.counters["aot_autograd"]["ok"] >= 1 and not dynamo.counters["graph_break"]
    assert compiled_kept <= kept * 1.1, f"compiled layers keep {compiled_kept} bytes for backward, eager ones {kept}"
    assert compiled_loss == pytest.approx(loss, rel=1e-2)
    assert ((compiled_gradients - gradients).norm() / gradients.norm()).item() < 2e-2
