"""Checkpointed layer inputs kept in CPU memory (train.offload_layer_inputs): the same gradients, every input
copied out and back once, in an order that lets each copy back start a layer early.

On the CPU the copies are plain copies (no streams, no pinned memory), so these check the bookkeeping and the
maths; the overlap with the GPU's work and the memory it frees are measured on a GPU (results/)."""

import gc

import pytest
import torch
from conftest import tiny_config, train_tiny

from studio.errors import ConfigError
from studio.events import read_events
from studio.speed.offload_inputs import LayerInputOffload, offload_layer_inputs, offloads_layer_inputs


def _model(tiny_llama, offload: LayerInputOffload | None):
    from studio.recipes import from_dict
    from studio.train.training import load_for_training

    cfg = from_dict({"model": {"name_or_path": str(tiny_llama)}, "lora": {"dropout": 0.0},
                     "train": {"compile_layers": False}})
    model, _ = load_for_training(cfg)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    if offload is not None:
        assert offload_layer_inputs(model, offload) == 2  # the tiny model's two decoder layers
    return model.train()


def _gradients(model, ids, steps: int = 1) -> tuple[list[float], dict[str, torch.Tensor]]:
    ids, losses = ids.to(model.device), []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        losses.append(loss.item())
    return losses, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("shape", [(1, 16), (2, 64), (3, 37)])
def test_offloaded_inputs_give_the_same_loss_and_gradients(tiny_llama, shape):
    ids = torch.randint(3, 100, shape, generator=torch.Generator().manual_seed(sum(shape)))
    offload = LayerInputOffload(min_bytes=1, host_budget_bytes=1 << 30)
    plain_losses, plain = _gradients(_model(tiny_llama, None), ids, steps=2)
    losses, offloaded = _gradients(_model(tiny_llama, offload), ids, steps=2)  # gradients accumulate over two
    assert offload.offloaded == 4  # each layer's input, each pass
    assert losses == plain_losses
    assert offloaded.keys() == plain.keys() and len(plain) == 2 * 7 * 2  # A and B of seven projections, two layers
    for name in plain:
        torch.testing.assert_close(offloaded[name], plain[name], rtol=0, atol=0, msg=name)


def test_each_input_comes_back_once_and_brings_back_the_one_before_it(tiny_llama):
    offload = LayerInputOffload(min_bytes=1, host_budget_bytes=1 << 30)
    model = _model(tiny_llama, offload)
    events = []
    original_pack, original_unpack = offload.pack, offload.unpack

    def pack(tensor):
        saved = original_pack(tensor)
        if tensor.numel() == 0:
            return saved  # torch's checkpoint also saves an empty marker tensor (torch 2.11), which stays
        saved.name = f"layer {len([e for e in events if e[0] == 'saved'])}"
        original_fetch = saved.fetch
        saved.fetch = lambda: (events.append(("fetched", saved.name)) if saved.fetched is None else None,
                               original_fetch())
        events.append(("saved", saved.name))
        return saved

    def unpack(saved):
        if not isinstance(saved, torch.Tensor):
            events.append(("used", saved.name))
        return original_unpack(saved)

    offload.pack, offload.unpack = pack, unpack
    ids = torch.randint(3, 100, (2, 32), generator=torch.Generator().manual_seed(1)).to(model.device)
    model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    assert events == [("saved", "layer 0"), ("saved", "layer 1"),
                      ("used", "layer 1"), ("fetched", "layer 1"), ("fetched", "layer 0"),
                      ("used", "layer 0")]
    gc.collect()
    assert offload.held_bytes == 0  # the copies went with the step's graph


def test_inputs_stay_where_they_are_past_the_cpu_memory_budget_or_below_the_size_floor(tiny_llama):
    ids = torch.randint(3, 100, (2, 32), generator=torch.Generator().manual_seed(2))
    measured = LayerInputOffload(min_bytes=1, host_budget_bytes=1 << 30)
    model = _model(tiny_llama, measured)
    loss = model(input_ids=ids.to(model.device), labels=ids.to(model.device), use_cache=False).loss
    one_input = measured.held_bytes // 2  # two layers' inputs held until backward
    loss.backward()
    for offload, expected in [(LayerInputOffload(min_bytes=1, host_budget_bytes=one_input), 1),
                              (LayerInputOffload(min_bytes=1, host_budget_bytes=0), 0),
                              (LayerInputOffload(host_budget_bytes=1 << 30), 0)]:  # 1 MiB floor: tiny inputs stay
        _gradients(_model(tiny_llama, offload), ids)
        assert offload.offloaded == expected


def test_when_no_pinned_memory_can_be_had_the_inputs_stay_and_training_goes_on(tiny_llama, monkeypatch):
    import studio.speed.offload_inputs as offload_inputs

    def refuse(*args, **kwargs):
        raise RuntimeError("CUDA error: out of memory (pinned host memory)")

    monkeypatch.setattr(offload_inputs._HostCopy, "__init__", refuse)
    offload = LayerInputOffload(min_bytes=1, host_budget_bytes=1 << 30)
    ids = torch.randint(3, 100, (2, 32), generator=torch.Generator().manual_seed(3))
    losses, gradients = _gradients(_model(tiny_llama, offload), ids)
    assert offload.offloaded == 0 and offload.host_budget_bytes == 0
    plain_losses, plain = _gradients(_model(tiny_llama, None), ids)
    assert losses == plain_losses and all(torch.equal(gradients[n], plain[n]) for n in plain)


def test_the_trainer_offloads_when_asked_and_trains_to_the_same_losses(tiny_llama, tmp_path, monkeypatch):
    import studio.speed.offload_inputs as offload_inputs

    monkeypatch.setattr(offload_inputs, "MIN_BYTES", 1)  # the tiny model's inputs are a few KiB
    counted = []
    original = offload_inputs.offload_layer_inputs
    monkeypatch.setattr(offload_inputs, "offload_layer_inputs",
                        lambda model, offload: counted.append(original(model, offload)) or counted[-1])
    overrides = ("train.max_steps=3", "train.gradient_checkpointing=true", "lora.dropout=0")
    plain = train_tiny(tiny_config(tiny_llama, *overrides, "train.offload_layer_inputs=false"), tmp_path / "plain")
    offloaded = train_tiny(tiny_config(tiny_llama, *overrides, "train.offload_layer_inputs=true"), tmp_path / "off")
    assert plain.state == offloaded.state == "completed"
    assert counted == [2]  # only the second run, both layers

    def losses(run):
        return [e.loss for e in read_events(run.run_dir / "events.jsonl") if e.kind == "log"]

    assert losses(offloaded) == pytest.approx(losses(plain), rel=1e-6)


def test_auto_offloads_on_a_gpu_with_checkpointing_and_a_recipe_cannot_ask_for_it_without(tiny_llama):
    assert offloads_layer_inputs(tiny_config(tiny_llama, "train.gradient_checkpointing=true"), on_gpu=True)
    assert not offloads_layer_inputs(tiny_config(tiny_llama, "train.gradient_checkpointing=true"), on_gpu=False)
    assert not offloads_layer_inputs(tiny_config(tiny_llama, "train.gradient_checkpointing=true",
                                                 "train.offload_activations=true"), on_gpu=True)
    assert not offloads_layer_inputs(tiny_config(tiny_llama), on_gpu=True)  # checkpointing off: nothing kept
    assert offloads_layer_inputs(tiny_config(tiny_llama, "train.gradient_checkpointing=true",
                                             "train.offload_layer_inputs=true"), on_gpu=False)
    with pytest.raises(ConfigError, match="train.gradient_checkpointing is off"):
        tiny_config(tiny_llama, "train.offload_layer_inputs=true")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("compile_layers", [False, True])
def test_on_cuda_the_inputs_leave_the_gpu_between_passes_and_the_gradients_stay_the_same(compile_layers, tiny_llama):
    from studio.recipes import from_dict
    from studio.train.training import load_for_training

    rows, length = 4, 1024

    def step(offload: LayerInputOffload | None):
        cfg = from_dict({"model": {"name_or_path": str(tiny_llama)}, "lora": {"dropout": 0.0},
                         "train": {"compile_layers": compile_layers, "fused_lora": True}})
        model, _ = load_for_training(cfg)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
        if offload is not None:
            offload_layer_inputs(model, offload)
        model.train()
        ids = torch.randint(3, 100, (rows, length), generator=torch.Generator().manual_seed(0)).to(model.device)
        for _ in range(2):  # the second pass: compiled, and the first pass's copies' memory reused
            model.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            torch.cuda.synchronize()
            torch.empty(1, device="cuda")  # has the allocator take back the memory whose copies have finished
            kept = torch.cuda.memory_allocated() - before
            loss.backward()
        gradients = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
        return loss.item(), gradients, kept, model.config

    loss, gradients, kept, config = step(None)
    offload = LayerInputOffload(min_bytes=1, host_budget_bytes=1 << 30)
    offloaded_loss, offloaded_gradients, offloaded_kept, _ = step(offload)
    inputs = config.num_hidden_layers * rows * length * config.hidden_size * 2  # bf16
    assert offload.offloaded == 2 * config.num_hidden_layers
    # The last layer's input is still in use when the forward pass ends; every earlier one has left.
    assert kept - offloaded_kept >= inputs * (config.num_hidden_layers - 1) / config.num_hidden_layers * 0.95
    assert offloaded_loss == loss
    assert torch.equal(offloaded_gradients, gradients)
