from studio.catalog import CATALOG, GEMMA_3_270M, LLAMA_3_1_8B, LLAMA_3_2_1B
from studio.config import RunConfig
from studio.recipes import apply_overrides
from studio.fit import advice, estimate_fit, lora_parameters, parameter_counts, shape_of


def test_parameter_counts_match_the_published_sizes():
    assert round(sum(parameter_counts(GEMMA_3_270M)) / 1e6) == 268
    assert round(sum(parameter_counts(LLAMA_3_2_1B)) / 1e9, 2) == 1.24
    assert round(sum(parameter_counts(LLAMA_3_1_8B)) / 1e9, 2) == 8.03


def test_shape_read_from_a_local_config_counts_the_real_parameters(tiny_llama):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    shape = shape_of(str(tiny_llama))
    matrices = sum(p.numel() for p in model.parameters() if p.dim() == 2)
    assert sum(parameter_counts(shape)) == matrices
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft = get_peft_model(model, LoraConfig(r=8, target_modules=targets))
    trainable = sum(p.numel() for p in peft.parameters() if p.requires_grad)
    assert lora_parameters(shape, 8) == trainable
    assert torch.is_tensor(next(model.parameters()))


def test_verdicts_and_advice_name_the_numbers_and_the_fix():
    cfg = apply_overrides(RunConfig(), ["model.load_in=16bit", "train.max_length=2048", "train.batch_size=2"])
    big = estimate_fit(LLAMA_3_1_8B, cfg, available_gib=8.0, on_gpu=True)
    assert big.verdict == "does not fit"
    text = advice(LLAMA_3_1_8B, cfg, big, on_gpu=True)
    assert text.startswith("Does not fit: needs ≈") and "of 8.0 GiB GPU" in text and "4-bit loading (≈" in text
    four_bit = apply_overrides(cfg, ["model.load_in=4bit"])
    four = estimate_fit(LLAMA_3_1_8B, four_bit, 8.0, True)
    assert four.weights_gib < big.weights_gib * 0.4 and four.activations_gib <= big.activations_gib
    small = estimate_fit(GEMMA_3_270M, RunConfig(), available_gib=24.0, on_gpu=False)
    assert small.verdict == "fits" and advice(GEMMA_3_270M, RunConfig(), small, False).startswith("Fits: needs ≈")


def test_catalog_marks_base_and_instruct_models():
    assert {m.kind for m in CATALOG} == {"base", "instruct"}
    assert CATALOG[0].source == "builtin:gemma-3-270m"


# Measured before train.offload_layer_inputs existed: those runs kept their layer inputs on the GPU.
BEFORE_LAYER_INPUT_OFFLOAD = ("train.offload_layer_inputs=false",)


def _as_measured(report: dict, before_offload: bool):
    from studio.bench.paths import BenchSpec

    overrides = tuple(report["spec"]["overrides"])
    if before_offload and not any(o.startswith("train.offload_layer_inputs") for o in overrides):
        overrides += BEFORE_LAYER_INPUT_OFFLOAD
    return BenchSpec(**{**report["spec"], "overrides": overrides})


def _measured_peaks():
    """(shape name, run config, measured peak allocated GiB) for every GPU measurement in results/
    (bench-h100.json, compile-h100/, offload-h200/)."""
    import json
    from pathlib import Path

    from studio.bench.paths import BenchSpec, studio_config

    results = Path(__file__).resolve().parent.parent / "results"
    reports = [(r, True) for r in json.loads((results / "bench-h100.json").read_text())]
    # Compiled layers and offload, one report a file (Unsloth's files beside them have no "kind"); the
    # layers compiled around their checkpoint were an earlier implementation.
    files = [(p, True) for p in sorted(results.glob("compile-h100/*/*.json"))
             if p.parent.name != "compiled-around-checkpoint"]
    files += [(p, False) for p in sorted(results.glob("offload-h200/*/*.json"))]
    reports += [(r, before) for r, before in ((json.loads(p.read_text()), before) for p, before in files)
                if r.get("kind") == "throughput" and not r["spec"].get("profile")]
    for report, before_offload in reports:
        spec = _as_measured(report, before_offload)
        if report["kind"] == "longest_sequence":
            for trial in report["trials"]:
                if trial["fits"]:
                    cfg = studio_config(BenchSpec(**{**vars(spec), "length": trial["length"]}), Path(spec.model))
                    yield spec.model, cfg, trial["peak_allocated_gib"]
        else:
            studio = next(r for r in report["results"] if r["path"] == "studio")
            yield spec.model, studio_config(spec, Path(spec.model)), studio["peak_allocated_gib"]


def _measured_method_peaks():
    """The same for the methods' measurements (results/methods-h100.md): preference methods, full fine-tuning, GaLore."""
    import json
    from pathlib import Path

    from studio.bench.paths import BenchSpec, studio_config

    folder = Path(__file__).resolve().parent.parent / "results" / "h100-methods"
    for path in sorted(folder.glob("*.json")):
        report = json.loads(path.read_text())
        if "runs" in report:
            for run in report["runs"]:
                spec = BenchSpec(run["model"], run["method"], run["batch"], run["length"],
                                 overrides=tuple(run["overrides"]) + BEFORE_LAYER_INPUT_OFFLOAD,
                                 train_method=run["train_method"])
                yield spec.model, studio_config(spec, Path(spec.model)), run["peak_allocated_gib"]
            continue
        spec = _as_measured(report, before_offload=True)
        studio = next(r for r in report["results"] if r["path"] == "studio")
        yield spec.model, studio_config(spec, Path(spec.model)), studio["peak_allocated_gib"]


def test_every_method_estimate_is_within_15_percent_of_its_measured_gpu_peak():
    from studio.bench.shapes import BENCH_SHAPES

    methods = set()
    for name, cfg, measured in _measured_method_peaks():
        estimate = estimate_fit(BENCH_SHAPES[name][1], cfg, available_gib=80.0, on_gpu=True)
        assert abs(estimate.peak_gib / measured - 1) <= 0.15, (name, cfg.train, cfg.galore, estimate.peak_gib, measured)
        methods.add(cfg.train.method)
    assert methods >= {"sft", "dpo", "orpo", "kto", "galore"}


def test_estimate_is_within_15_percent_of_every_measured_gpu_peak():
    from studio.bench.shapes import BENCH_SHAPES

    checked = 0
    for name, cfg, measured in _measured_peaks():
        shape = BENCH_SHAPES[name][1]
        estimate = estimate_fit(shape, cfg, available_gib=80.0, on_gpu=True)
        assert abs(estimate.peak_gib / measured - 1) <= 0.15, (name, cfg.train, estimate.peak_gib, measured)
        checked += 1
    assert checked >= 10


def test_sharded_and_deepspeed_estimates_count_the_32bit_adamw_they_step():
    from studio.fit import check_fit
    from studio.recipes import from_dict, replace_section

    full = from_dict({"model": {"name_or_path": "meta-llama/Llama-3.1-8B-Instruct"}, "lora": {"enabled": False}})
    data_parallel, _ = check_fit(full, 80.0, True, 1, "ddp")  # auto: 8-bit AdamW
    as_adamw, _ = check_fit(replace_section(full, "train", optimizer="adamw_torch"), 80.0, True, 2)
    for engine in ("fsdp", "deepspeed-zero3"):
        sharded, _ = check_fit(full, 80.0, True, 2, engine)
        assert sharded.trainable_gib == as_adamw.trainable_gib > data_parallel.trainable_gib / 2
