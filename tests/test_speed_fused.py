"""Fused LoRA layers: the same forward and gradients as PEFT's own layers, the same training, the same adapter.

Every check compares against PEFT's LoRA layer on the same weights (the
reference maths), on fresh random inputs of several shapes, for a 16-bit base
and for a bitsandbytes 4-bit base (nf4 with nested absmax, as the studio
loads it), in float32 on the CPU.
"""

import importlib.metadata
import json

import pytest
import torch

from conftest import tiny_config, train_tiny

SHAPES = [  # (leading dims of x, in features, out features, rank, alpha)
    ((7, 64), 64, 96, 8, 24),
    ((2, 5, 128), 128, 64, 16, 16),
    ((3, 1, 256), 256, 256, 4, 7),
]


class _One(torch.nn.Module):
    def __init__(self, linear):
        super().__init__()
        self.proj = linear

    def forward(self, x):
        return self.proj(x)


def _linear_16bit(fan_in, fan_out, bias, generator):
    linear = torch.nn.Linear(fan_in, fan_out, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(fan_out, fan_in, generator=generator) * 0.05)
        if bias:
            linear.bias.copy_(torch.randn(fan_out, generator=generator))
    return linear


def _linear_4bit(fan_in, fan_out, bias, generator, storage=torch.uint8):
    import bitsandbytes as bnb

    linear = bnb.nn.Linear4bit(fan_in, fan_out, bias=bias, compute_dtype=torch.float32, compress_statistics=True,
                               quant_type="nf4", quant_storage=storage)
    weight = torch.randn(fan_out, fan_in, generator=generator) * 0.05
    linear.weight = bnb.nn.Params4bit(weight, requires_grad=False, compress_statistics=True, quant_type="nf4",
                                      quant_storage=storage)
    if bias:
        linear.bias = torch.nn.Parameter(torch.randn(fan_out, generator=generator), requires_grad=False)
    return linear.to("cpu")  # quantizes the weight


def _lora_model(base, rank, alpha, seed):
    """PEFT's LoRA on one linear layer, with both factors random (B starts at zero otherwise)."""
    from peft import LoraConfig, get_peft_model

    for p in base.parameters():
        p.requires_grad_(False)
    model = get_peft_model(_One(base), LoraConfig(r=rank, lora_alpha=alpha, target_modules=["proj"]))
    layer = model.base_model.model.proj
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for factor in (layer.lora_A["default"].weight, layer.lora_B["default"].weight):
            factor.copy_(torch.randn(factor.shape, generator=generator) * 0.3)
    return model, layer


def _forward_and_gradients(model, layer, x, weights):
    """Output and the gradients of x, A and B for loss = sum(output * weights)."""
    x = x.clone().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    out = model(x)
    (out * weights).sum().backward()
    return {"out": out.detach(), "x": x.grad, "A": layer.lora_A["default"].weight.grad,
            "B": layer.lora_B["default"].weight.grad}


@pytest.fixture
def fused_calls(monkeypatch) -> list:
    """Each call of the fused LoRA function appends to this list (the function itself still runs)."""
    import studio.speed.lora_linear as lora_linear

    calls = []
    original = lora_linear.LoraLinearFunction.forward
    monkeypatch.setattr(lora_linear.LoraLinearFunction, "forward",
                        staticmethod(lambda *args: calls.append(1) or original(*args)))
    return calls


def _relative_error(got, want):
    return ((got - want).norm() / want.norm()).item()


@pytest.mark.parametrize("kind", ["16bit", "4bit"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("lead, fan_in, fan_out, rank, alpha", SHAPES)
def test_fused_layer_matches_peft_forward_and_every_gradient(kind, bias, lead, fan_in, fan_out, rank, alpha):
    from studio.speed.fused import use_fused_lora

    seed = hash((kind, bias, fan_in, fan_out, rank)) % 2**31
    generator = torch.Generator().manual_seed(seed)
    make = _linear_16bit if kind == "16bit" else _linear_4bit
    model, layer = _lora_model(make(fan_in, fan_out, bias, generator), rank, alpha, seed)
    x = torch.randn(*lead[:-1], fan_in, generator=generator)
    weights = torch.randn(*lead[:-1], fan_out, generator=generator)

    reference = _forward_and_gradients(model, layer, x, weights)
    assert use_fused_lora(model) == 1
    fused = _forward_and_gradients(model, layer, x, weights)

    for name, want in reference.items():
        assert fused[name].shape == want.shape and fused[name].dtype == want.dtype, name
        assert torch.isfinite(fused[name]).all(), name
        assert _relative_error(fused[name], want) < 1e-5, name


def test_compiled_fused_layer_accumulates_into_its_own_buffers():
    """Compiled, the LoRA terms are still added into the products' own outputs (no copy of the output first),
    with the eager layer's forward and gradients."""
    import re

    from torch._inductor.utils import run_and_get_code

    from studio.speed.lora_linear import lora_linear

    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(96, 64, generator=generator)
    factors = [torch.randn(8, 64, generator=generator).requires_grad_(), torch.randn(96, 8, generator=generator)]
    factors[1].requires_grad_()
    x = torch.randn(4, 7, 64, generator=generator, requires_grad=True)

    def loss(x, a, b):
        return lora_linear(x, weight, None, None, a, b, 0.75, torch.float32).square().sum()

    def gradients(fn):
        for tensor in (x, *factors):
            tensor.grad = None
        value = fn(x, *factors)
        value.backward()
        return [value.detach()] + [t.grad.clone() for t in (x, *factors)]

    eager = gradients(loss)
    torch._dynamo.reset()
    compiled, codes = run_and_get_code(gradients, torch.compile(loss, fullgraph=True))
    for got, want in zip(compiled, eager):
        assert _relative_error(got, want) < 1e-5
    forward_code = codes[0]
    # The product's output buffer is the one the LoRA term is added into: nothing copies it in between.
    (product_out,) = re.findall(r"extern_kernels\.mm\([^\n]*primals_2[^\n]*out=(buf\d+)\)", forward_code)  # x @ W^T
    assert f"torch.ops.studio.accumulate_product.default({product_out}," in forward_code
    backward_code = codes[1]
    assert re.search(r"torch\.ops\.studio\.accumulate_product\.default\((buf\d+),", backward_code)
    assert "clone" not in forward_code + backward_code and "copy_" not in forward_code + backward_code


def test_fused_layer_is_really_used_and_gives_way_where_it_does_not_apply(fused_calls):
    from studio.speed.fused import use_fused_lora

    generator = torch.Generator().manual_seed(5)
    model, layer = _lora_model(_linear_16bit(32, 48, True, generator), 8, 16, 5)
    x = torch.randn(4, 32, generator=generator)
    use_fused_lora(model)
    assert type(layer).__name__ == "Linear" and layer.__class__.__mro__[1].__name__ == "FusedLoraForward"
    model(x)
    assert len(fused_calls) == 1
    with model.disable_adapter():  # PEFT's own forward: the base layer alone
        assert torch.allclose(model(x), layer.base_layer(x))
    assert len(fused_calls) == 1
    # Switching twice changes nothing.
    assert use_fused_lora(model) == 0


@pytest.mark.parametrize("storage", [torch.uint8, torch.bfloat16], ids=["bytes", "bf16-storage"])
def test_a_4bit_weight_gathered_by_fsdp_is_unpacked_with_the_layers_quantization_state(storage, fused_calls):
    """FSDP hands a gathered weight back as a plain tensor of its storage dtype (bf16 when sharded), without
    the quantization state: the fused layer takes the state from the layer and computes what PEFT does."""
    from studio.speed.fused import use_fused_lora

    generator = torch.Generator().manual_seed(11)
    base = _linear_4bit(64, 96, False, generator, storage)
    model, layer = _lora_model(base, 8, 16, 11)
    x, weights = torch.randn(5, 64, generator=generator), torch.randn(5, 96, generator=generator)
    want = _forward_and_gradients(model, layer, x, weights)
    use_fused_lora(model)
    base.quant_state = base.weight.quant_state  # where bitsandbytes also keeps it for a layer it made itself
    base.weight = torch.nn.Parameter(base.weight.data.clone(), requires_grad=False)
    assert getattr(base.weight, "quant_state", None) is None and base.weight.dtype == storage
    got = _forward_and_gradients(model, layer, x, weights)
    assert fused_calls == [1]  # the fused path, not the packed bytes multiplied as a matrix
    for name in want:
        assert _relative_error(got[name], want[name]) < 1e-5, name


def test_fused_adapter_saves_the_same_tensors_and_merges(tmp_path):
    from safetensors.torch import load_file

    from studio.speed.fused import use_fused_lora

    generator = torch.Generator().manual_seed(9)
    model, layer = _lora_model(_linear_16bit(64, 64, False, generator), 8, 16, 9)
    model.save_pretrained(tmp_path / "plain")
    use_fused_lora(model)
    model.save_pretrained(tmp_path / "fused")
    plain = load_file(tmp_path / "plain" / "adapter_model.safetensors")
    fused = load_file(tmp_path / "fused" / "adapter_model.safetensors")
    assert plain.keys() == fused.keys() and all(torch.equal(plain[k], fused[k]) for k in plain)

    x = torch.randn(3, 64, generator=generator)
    with torch.no_grad():
        before = model(x)
        merged = model.merge_and_unload()
        assert type(merged.proj) is torch.nn.Linear
        assert torch.allclose(merged(x), before, atol=1e-5)


def test_fused_lora_setting_is_decided_with_clear_refusals(tiny_llama, monkeypatch):
    from studio.errors import ConfigError
    from studio.speed import fused
    from studio.speed.fused import fused_lora_wanted

    def cfg(*overrides):
        return tiny_config(tiny_llama, *overrides)

    for cuda in (False, True):  # auto: on with CUDA
        monkeypatch.setattr(fused, "has_cuda", lambda: cuda)
        assert fused_lora_wanted(cfg()) is cuda
    assert fused_lora_wanted(cfg("train.fused_lora=on")) is True
    assert fused_lora_wanted(cfg("train.fused_lora=off")) is False
    with pytest.raises(ConfigError, match="lora.dropout=0"):
        fused_lora_wanted(cfg("train.fused_lora=true", "lora.dropout=0.1"))
    with pytest.raises(ConfigError, match="use_dora is on"):
        fused_lora_wanted(cfg("train.fused_lora=true", "lora.use_dora=true"))


def test_other_library_versions_turn_auto_off_with_a_note_and_true_warns(tiny_llama, monkeypatch):
    from studio.speed import fused

    monkeypatch.setitem(fused.CHECKED_VERSIONS, "peft", "0.0.1")
    monkeypatch.setattr(fused, "has_cuda", lambda: True)
    notes = []
    assert fused.fused_lora_wanted(tiny_config(tiny_llama), notes.append) is False
    assert "Fused LoRA layers off" in notes[0] and "(checked: 0.0.1)" in notes[0]
    assert "train.fused_lora=true" in notes[0]
    notes.clear()
    assert fused.fused_lora_wanted(tiny_config(tiny_llama, "train.fused_lora=on"), notes.append)
    assert "untested versions" in notes[0] and "train.fused_lora=false" in notes[0]
    notes.clear()
    monkeypatch.setitem(fused.CHECKED_VERSIONS, "peft", importlib.metadata.version("peft"))
    assert fused.fused_lora_wanted(tiny_config(tiny_llama), notes.append) is True  # auto on CUDA
    assert notes == []


def _events(run_dir):
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def _step_losses(run_dir):
    return [e["loss"] for e in _events(run_dir) if e["kind"] == "log" and e.get("loss") is not None]


def _fused_notes(run_dir):
    return [e["message"] for e in _events(run_dir) if e["kind"] == "stage" and "Fused LoRA" in e["message"]]


@pytest.mark.skipif(torch.cuda.is_available(), reason="compares float32 runs on the CPU to 1e-4; on CUDA the "
                    "runs train in bf16 (test_fused_layer_matches_peft_on_cuda_under_bf16_autocast covers it there)")
@pytest.mark.parametrize("overrides", [
    (),
    ("model.load_in=4bit",),
    ("train.gradient_checkpointing=true", "lora.alpha=24"),
], ids=["16bit", "4bit", "checkpointing"])
def test_training_with_fused_layers_gives_the_same_losses(tiny_llama, tmp_path, overrides):
    # Plain SGD: its steps are linear in the gradients, so float32 rounding differences (~1e-7) stay that
    # small, while any error in a gradient moves the losses. (Adam divides each gradient element by its own
    # size, which turns rounding noise on near-zero elements into full-size steps.)
    overrides = ("train.optimizer=sgd", "train.learning_rate=0.5", "train.max_steps=4", *overrides)
    runs = {}
    for setting in ("false", "true"):
        cfg = tiny_config(tiny_llama, f"train.fused_lora={setting}", *overrides)
        result = train_tiny(cfg, tmp_path / setting)
        assert result.state == "completed"
        runs[setting] = _step_losses(result.run_dir)
        # The run said whether its layers were fused: all 14 adapted layers of the tiny Llama, or none.
        assert _fused_notes(result.run_dir) == (["Fused LoRA layers: 14 (the LoRA term accumulated into the base "
                                                 "matrix multiply)."] if setting == "true" else [])
    plain, fused = runs["false"], runs["true"]
    assert len(plain) == len(fused) == tiny_config(tiny_llama, *overrides).train.max_steps
    assert plain[-1] < plain[0] - 0.05, plain  # the adapter learned: the comparison has power
    assert max(abs(a - b) for a, b in zip(plain, fused)) < 1e-4, (plain, fused)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("nested", [True, False])
@pytest.mark.parametrize("shape", [(4096, 4096), (14336, 4096), (1024, 14336), (96, 64), (3, 192)])
def test_one_launch_nf4_unpacking_is_bitsandbytes_bit_for_bit(shape, nested):
    import bitsandbytes.functional as bnb_functional

    from studio.speed.nf4_triton import dequantize_nf4, supports

    weight = torch.randn(shape, device="cuda", dtype=torch.bfloat16) * 0.02
    packed, state = bnb_functional.quantize_4bit(weight, quant_type="nf4", compress_statistics=nested)
    assert supports(packed, state)
    want = bnb_functional.dequantize_4bit(packed, state)
    got = dequantize_nf4(packed, state)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got, want)


@cuda
@pytest.mark.parametrize("kind", ["16bit", "4bit"])
def test_fused_layer_matches_peft_on_cuda_under_bf16_autocast(kind):
    import bitsandbytes as bnb

    from studio.speed.fused import use_fused_lora

    generator = torch.Generator().manual_seed(3)
    if kind == "16bit":
        base = _linear_16bit(512, 1536, False, generator).to("cuda", torch.bfloat16)
    else:
        base = bnb.nn.Linear4bit(512, 1536, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4",
                                 compress_statistics=True)
        base.weight = bnb.nn.Params4bit(torch.randn(1536, 512, generator=generator).to(torch.bfloat16) * 0.05,
                                        requires_grad=False, quant_type="nf4", compress_statistics=True)
        base = base.to("cuda")
    model, layer = _lora_model(base, 16, 16, 3)
    model.to("cuda")
    x = torch.randn(4, 1000, 512, generator=generator).to("cuda", torch.bfloat16)
    weights = torch.randn(4, 1000, 1536, generator=generator).to("cuda", torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        reference = _forward_and_gradients(model, layer, x, weights)
        use_fused_lora(model)
        fused = _forward_and_gradients(model, layer, x, weights)
    for name, want in reference.items():
        assert fused[name].dtype == want.dtype, name
        assert _relative_error(fused[name].float(), want.float()) < 1e-2, name
