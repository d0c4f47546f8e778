"""The training path's memory and speed measures: same maths as the plain model, and the benchmark.

The CUDA-only parts (Liger kernels, activation offload, embeddings on the CPU)
are chosen at run time; here their CPU-testable parts run: the sliced
feed-forward blocks, the embedding placement decision, the benchmark's two
paths with the loss parity between them, its FLOP count and its report.
"""

import json

import pytest
import torch


def _loss_and_gradients(model, input_ids):
    model.zero_grad()
    loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_sliced_feed_forward_gives_the_same_loss_and_gradients(tiny_llama):
    from transformers import AutoModelForCausalLM

    from studio.speed.long_rows import slice_feed_forward

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    input_ids = torch.randint(3, 1000, (2, 100), generator=torch.Generator().manual_seed(0))
    plain = _loss_and_gradients(model, input_ids)

    assert slice_feed_forward(model, tokens=16) == 2  # one block per layer; 100 tokens -> 7 slices
    assert type(model.model.layers[0].mlp).__name__ == "SlicedLlamaMLP"
    sliced = _loss_and_gradients(model, input_ids)

    assert sliced[0] == pytest.approx(plain[0], abs=1e-6)
    assert plain[1].keys() == sliced[1].keys()
    for name, grad in plain[1].items():
        assert torch.allclose(grad, sliced[1][name], atol=1e-6), name
    # Slicing again replaces the slice size instead of stacking wrappers.
    slice_feed_forward(model, tokens=32)
    assert type(model.model.layers[0].mlp).__mro__[1].__name__ == "LlamaMLP"


def test_input_embeddings_stay_put_without_cuda_or_when_tied(tiny_llama):
    from transformers import AutoModelForCausalLM

    from studio.speed.embeddings import keep_input_embeddings_on_cpu

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    assert keep_input_embeddings_on_cpu(model) is False  # already on the CPU: nothing to spare
    assert type(model.get_input_embeddings()).__name__ == "Embedding"


def test_embeddings_in_cpu_memory_compute_the_same_and_are_never_moved(tiny_llama):
    from transformers import AutoModelForCausalLM

    from studio.speed.embeddings import EmbeddingsInCpuMemory

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    model.get_input_embeddings().weight.requires_grad_(False)  # frozen, as under LoRA
    model.enable_input_require_grads()
    input_ids = torch.randint(3, 1000, (2, 40), generator=torch.Generator().manual_seed(1))
    plain = _loss_and_gradients(model, input_ids)

    model.set_input_embeddings(EmbeddingsInCpuMemory(model.get_input_embeddings(), torch.device("cpu")))
    model.enable_input_require_grads()  # as the trainer does, on the new module
    moved = _loss_and_gradients(model, input_ids)
    assert moved[0] == pytest.approx(plain[0], abs=1e-6)
    assert plain[1].keys() == moved[1].keys()
    for name, grad in plain[1].items():
        assert torch.allclose(grad, moved[1][name], atol=1e-6), name

    # Not a parameter of the model: moving the model (as trainers do) leaves the table where it is.
    assert not any("embed_tokens" in name for name, _ in model.named_parameters())
    model.to("meta")
    assert model.get_input_embeddings().weight.device.type == "cpu"


def test_flops_per_token_counts_matmuls_and_causal_attention():
    from studio.bench.report import flops_per_token
    from studio.bench.shapes import shape_config

    config = shape_config("llama-3.2-1b")
    # 973M parameters in the layers' linear maps + the 263M output head, 4 FLOPs each per token.
    matmuls = 4 * (16 * (2 * 2048 * 2048 + 2 * 2048 * 512 + 3 * 2048 * 8192) + 128256 * 2048)
    attention = 16 * 6 * 2048 * 2048
    assert flops_per_token(config, 2048) == matmuls + attention


def test_bench_runs_both_paths_with_the_same_loss(tmp_path, capsys):
    from studio.cli import main

    out = tmp_path / "bench" / "tiny.json"
    code = main(["bench", "tiny-llama", "--method", "lora", "--batch", "2", "--length", "64", "--steps", "2",
                 "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    studio, reference = report["results"]
    assert (studio["path"], reference["path"]) == ("studio", "reference")
    assert len(studio["losses"]) == len(reference["losses"]) == 5  # 3 warm-up + 2 measured
    assert len(studio["step_seconds"]) == 2 and studio["tokens_per_s"] > 0
    # Same weights, rows, adapter initialisation and optimizer settings: the same loss curve.
    assert report["loss_difference"] < 1e-3
    assert report["environment"]["versions"]["trl"]
    table = out.with_suffix(".md").read_text()
    assert "| studio |" in table and "| reference |" in table and "1.00x" in table
    assert "| studio |" in capsys.readouterr().out


def test_profiled_steps_come_after_the_measured_ones_and_are_not_timed(tmp_path):
    from studio.bench import describe
    from studio.cli import main

    out = tmp_path / "profiled.json"
    assert main(["bench", "tiny-llama", "--method", "lora", "--batch", "2", "--length", "64", "--steps", "2",
                 "--profile", "--no-reference", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    (studio,) = report["results"]
    assert len(studio["losses"]) == 3 + 2 + 3  # warm-up, measured, profiled (the profiler itself runs on CUDA)
    assert len(studio["step_seconds"]) == 2
    # On a GPU the report then says how much of a measured step the kernels fill, beside the profiled step.
    studio.update(median_step_s=0.2, profile={"busy_ms_per_step": 190.0, "profiled_step_s": 0.25,
                                               "gpu_ms_per_step": 200.0, "by_kind_ms_per_step": {"matrix multiply": 150.0}},
                  gpu_busy_percent=93.0)
    text = describe(report)
    assert "kernels running 190 ms of a 250 ms profiled step; unprofiled, the measured steps took 200 ms" in text
    assert "NVML read the GPU busy 93%" in text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_profiled_steps_count_the_gpus_busy_time_on_cuda(tmp_path):
    from studio.cli import main

    out = tmp_path / "profiled.json"
    assert main(["bench", "tiny-llama", "--method", "lora", "--batch", "2", "--length", "256", "--steps", "20",
                 "--profile", "--no-reference", "--out", str(out)]) == 0
    (studio,) = json.loads(out.read_text())["results"]
    profile = studio["profile"]
    # The union of the kernels' spans: no more than their sum, and inside the profiled steps' wall time.
    assert 0 < profile["busy_ms_per_step"] <= profile["gpu_ms_per_step"] + 1e-6
    assert profile["busy_ms_per_step"] <= profile["profiled_step_s"] * 1000
    assert studio["gpu_busy_percent"] is None or 0 <= studio["gpu_busy_percent"] <= 100


def test_busy_time_counts_overlapping_kernels_once():
    from types import SimpleNamespace

    from studio.bench.paths import busy_ms

    def spans(*pairs):
        return [SimpleNamespace(start=a, end=b) for a, b in pairs]

    assert busy_ms([]) == 0
    assert busy_ms(spans((0, 1000), (2000, 2500))) == 1.5  # apart: both count
    assert busy_ms(spans((0, 1000), (500, 1500))) == 1.5  # a copy beside a kernel: the union
    assert busy_ms(spans((3000, 4000), (0, 10_000), (9000, 12_000))) == 12.0  # nested and out of order


def test_bench_names_unknown_shapes_and_bad_memory_caps(capsys):
    from studio.cli import main

    assert main(["bench", "llama-9z"]) == 2
    assert "neither a known shape" in capsys.readouterr().err
    assert main(["bench", "tiny-llama", "--max-memory", "lots"]) == 2
    assert "not an amount of memory" in capsys.readouterr().err


def test_embeddings_in_cpu_memory_get_their_ids_from_the_data_loader(tiny_llama, tmp_path):
    from datasets import Dataset

    from studio.config import RunConfig
    from studio.recipes import apply_overrides
    from studio.models import attach_lora, load_model
    from studio.speed.embeddings import EmbeddingsInCpuMemory
    from studio.train.training import make_trainer

    cfg = apply_overrides(RunConfig(), [f"model.name_or_path={tiny_llama}", "train.max_steps=2", "train.batch_size=2",
                                        "train.grad_accum=1", "train.gradient_checkpointing=false"])
    model, tokenizer = load_model(cfg.model)
    model.set_input_embeddings(EmbeddingsInCpuMemory(model.get_input_embeddings(), torch.device("cpu")))
    model = attach_lora(model, cfg.lora)
    rows = torch.randint(3, 1000, (4, 32), generator=torch.Generator().manual_seed(2)).tolist()
    trainer = make_trainer(cfg, tmp_path, model, tokenizer, Dataset.from_dict({"input_ids": rows, "labels": rows}),
                           save_strategy="no")
    trainer.train()
    # Every lookup used the ids the loader handed over, none copied them back from the device.
    assert model.get_input_embeddings().lookups_without_waiting == 2
    assert trainer.state.log_history[-1]["train_loss"] > 0


def test_8bit_optimizers_wait_for_the_gpu_between_updates_only_when_paged():
    import bitsandbytes.optim.optimizer as optimizer

    from studio.speed.patches import no_waits_between_8bit_updates

    wait = optimizer.sync_gpu
    with no_waits_between_8bit_updates(paged=False):
        assert optimizer.sync_gpu is not wait
    assert optimizer.sync_gpu is wait, "put back after training"
    with no_waits_between_8bit_updates(paged=True):
        assert optimizer.sync_gpu is wait


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_8bit_updates_without_the_waits_are_the_same_on_cuda(monkeypatch):
    import bitsandbytes as bnb

    from studio.speed.patches import no_waits_between_8bit_updates

    waits = []
    synchronize = torch.cuda.synchronize
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: waits.append(1) or synchronize(*args))

    def three_steps(patched: bool) -> tuple[list[torch.Tensor], int]:
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(256, 4096, device="cuda")) for _ in range(8)]
        adam = bnb.optim.AdamW(params, lr=1e-3, optim_bits=8)
        waits.clear()
        with no_waits_between_8bit_updates(paged=not patched):
            for _ in range(3):
                for p in params:
                    p.grad = torch.randn_like(p)
                adam.step()
        return [p.detach().clone() for p in params], len(waits)

    waited, count = three_steps(patched=False)
    unwaited, none = three_steps(patched=True)
    assert count == 3 * 8 and none == 0
    assert all(torch.equal(a, b) for a, b in zip(waited, unwaited))


def test_profile_names_what_the_host_spends_a_step_on():
    from studio.bench.paths import kernel_time_by_kind

    a, b = torch.randn(256, 256), torch.randn(256, 256)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for _ in range(4):  # two "steps" of two products each
            a @ b
    profile = kernel_time_by_kind(profiler, steps=2)
    assert profile["gpu_ms_per_step"] == 0 and profile["host_ms_per_step"] > 0
    products = next(op for op in profile["top_host_ops"] if op["name"] in ("aten::mm", "aten::matmul"))
    assert products["calls_per_step"] == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_named_ranges_on_the_gpu_timeline_are_not_counted_as_kernels():
    from studio.bench.paths import kernel_time_by_kind

    a = torch.randn(2048, 2048, device="cuda")
    a @ a  # cuBLAS set up before profiling
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as profiler:
        with torch.profiler.record_function("a named range"):  # as torch marks each optimizer step
            a @ a
            a @ a
        torch.cuda.synchronize()
    profile = kernel_time_by_kind(profiler, steps=1)
    assert "a named range" not in [kernel["name"] for kernel in profile["top_kernels"]]
    assert list(profile["by_kind_ms_per_step"]) == ["matrix multiply"]  # only the products ran


@pytest.mark.parametrize("fused", [True, False])
def test_activation_offload_keeps_the_memory_cache_when_every_4bit_layer_is_fused(tiny_llama, fused):
    from types import SimpleNamespace

    from studio.recipes import from_dict
    from studio.speed.patches import offload_keeping_the_memory_cache
    from studio.train.training import load_for_training

    cfg = from_dict({"model": {"name_or_path": str(tiny_llama), "load_in": "4bit"}, "lora": {"dropout": 0.0},
                     "train": {"fused_lora": fused}})
    model, _ = load_for_training(cfg)
    emptied = []
    # TRL's offload context needs a GPU to exist; what the patch touches is its device module.
    device = SimpleNamespace(empty_cache=lambda: emptied.append(True), current_stream=lambda: "the stream")
    context = SimpleNamespace(device_module=device)
    assert offload_keeping_the_memory_cache(SimpleNamespace(model=model, maybe_activation_offload_context=context)) is fused
    context.device_module.empty_cache()
    assert emptied == ([] if fused else [True])  # PEFT's own 4-bit layers need the emptying
    assert context.device_module.current_stream() == "the stream"
