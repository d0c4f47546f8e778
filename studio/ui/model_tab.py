"""Model tab: pick a model (catalog, hub id, local folder, GGUF), precision, hardware, fit estimate."""

from __future__ import annotations

from dataclasses import dataclass, field

import gradio as gr

from studio.catalog import CATALOG
from studio.errors import StudioError
from studio.fit import capped_gib, check_fit
from studio.model_info import describe_model
from studio.config import RunConfig
from studio.ui.controls import control, more_settings
from studio.ui.form import config_from_form, named
from studio.ui.hook import Hook
from studio.train.placement import SHARDING_ENGINES, plan_placement

CUSTOM = "Other: hub id, local folder or .gguf file"


@dataclass
class ModelTab:
    choice: gr.Dropdown
    load: gr.Button
    fit: gr.Markdown
    info: gr.Markdown
    fit_estimate: Hook = field(init=False)  # the fit verdict from the whole run form (also drawn when the page loads)


def build(studio, form: dict, start: RunConfig) -> ModelTab:
    hw = studio.hardware()
    with gr.Row():
        with gr.Column(scale=3):
            choice = gr.Dropdown([m.name + (" · instruct" if m.kind == "instruct" else " · base") for m in CATALOG]
                                 + [CUSTOM], value=_label(CATALOG[0]), label="Model")
            form["model.name_or_path"] = control("model.name_or_path", start, elem_id="model-path")
            form["model.load_in"] = control("model.load_in", start, radio=True)
            with gr.Accordion("More: compute dtype, running a model's own code, pickle weights", open=False):
                more_settings(form, start, ("model",))
            load = gr.Button("Check model", variant="secondary")
        with gr.Column(scale=2):
            gr.Markdown(_hardware_text(hw), elem_id="hardware")
            fit = gr.Markdown(elem_id="fit-estimate")
            info = gr.Markdown(elem_id="model-info")
    return ModelTab(choice, load, fit, info)


def wire(studio, form: dict, tab: ModelTab) -> None:
    keys, inputs = list(form), list(form.values())

    def pick(label: str):
        """Inputs: catalog label. Outputs: the model path box."""
        source = next((m.source for m in CATALOG if _label(m) == label), None)
        return gr.update() if source is None else source

    def estimate(*values):
        """Inputs: the whole run form. Outputs: fit verdict markdown."""
        try:
            cfg = config_from_form(keys, values)
        except StudioError as exc:
            return f"⚠️ {exc}"
        hw = studio.hardware()
        try:
            placement = plan_placement(cfg, gpu_count=len(hw["gpus"]))
        except StudioError as exc:
            return f"⚠️ {exc}"
        shards = placement.processes if placement.engine in SHARDING_ENGINES else 1
        available = capped_gib(hw["available_gib"], cfg) if hw["gpu"] else hw["available_gib"]
        est, sentence = check_fit(cfg, available, hw["gpu"], shards, placement.engine)
        icon = {"fits": "✅", "tight": "🟡", "does not fit": "⛔"}.get(est.verdict if est else "", "❔")
        where = (f"**Each of {placement.processes} {'GPUs' if placement.gpus else 'processes'}** "
                 f"({placement.describe()}): " if placement.processes > 1 else "")
        parts = "" if est is None else (f"\n\nweights {est.weights_gib:.2f} · trainable+optimizer {est.trainable_gib:.2f} · "
                                         f"activations {est.activations_gib:.2f} · overhead {est.overhead_gib:.1f} GiB")
        return f"{icon} {where}{sentence}{parts}"

    def check(name_or_path: str, progress=gr.Progress()):
        """Inputs: model path. Outputs: what the model is (loads config and tokenizer, not the weights)."""
        progress(0.1, desc="Preparing the model files (first use of a GGUF dequantizes it once)")
        try:
            return _description(describe_model(name_or_path))
        except StudioError as exc:
            return f"⚠️ {exc}"

    named(estimate, keys)
    tab.choice.change(pick, tab.choice, form["model.name_or_path"], api_name="pick_model")
    for key in ("model.name_or_path", "model.load_in", "lora.enabled", "lora.r", "train.batch_size",
                "train.max_length", "train.gradient_checkpointing", "train.offload_activations",
                "train.offload_layer_inputs", "train.cpu_embeddings", "train.optimizer", "train.devices",
                "train.parallel", "train.gpu_memory_cap"):
        form[key].change(estimate, inputs, tab.fit, api_visibility="private")
    tab.load.click(check, form["model.name_or_path"], tab.info, api_name="check_model")
    tab.fit_estimate = Hook(estimate, inputs, tab.fit)


def _hardware_text(hw: dict) -> str:
    """The device line, and with several GPUs one line per GPU (the indices train.devices names)."""
    head = f"**Hardware** · {hw['device']} · {hw['total_gib']:.1f} GiB {'VRAM' if hw['gpu'] else 'RAM'}"
    if len(hw["gpus"]) < 2:
        return head
    return head + "".join(f"  \nGPU {index}: {name} · {total:.1f} GiB" for index, name, total in hw["gpus"]) + \
        f"  \n{len(hw['gpus'])} GPUs: train.devices=auto trains on all of them."


def _description(info) -> str:
    size = f"{info.parameters / 1e6:,.0f}M parameters · " if info.parameters else ""
    template = "its own chat template" if info.has_chat_template else "no chat template (a base model: Alpaca is used)"
    return f"**Ready**: {info.architecture} · {size}vocabulary {info.vocabulary:,} · {template}"


def _label(model) -> str:
    return model.name + (" · instruct" if model.kind == "instruct" else " · base")
