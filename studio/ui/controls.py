"""Form controls made from config fields: type, choices, default, bounds and help come from studio.config.

    form["train.learning_rate"] = control("train.learning_rate", start)           # a Number with the field's bounds
    form["data.template"] = control("data.template", start, choices=[...])         # a text field offered as a list
    more_settings(form, start, ("train", "lora"))                                   # every field not placed yet

A tab places the controls it wants in its layout; `more_settings` renders the
rest of its sections, so a field added to the config shows up in the UI with
no other edit.
"""

from __future__ import annotations

import gradio as gr

from studio.config import RunConfig
from studio.fields import FieldInfo, config_fields, field_info, value_at

# Short labels where the field's name says too little.
LABELS = {"name": "Run name", "lora.r": "LoRA rank r", "lora.alpha": "LoRA alpha", "lora.enabled": "LoRA (off: full fine-tuning)",
          "train.max_steps": "Max steps (0: epochs)", "train.grad_accum": "Grad accumulation",
          "model.name_or_path": "Model path or hub id", "model.load_in": "Load weights in"}


def label_of(key: str) -> str:
    """"train.learning_rate" -> "Learning rate", unless LABELS says better."""
    return LABELS.get(key) or key.rsplit(".", 1)[-1].replace("_", " ").capitalize()


def control(key: str, start: RunConfig, **ui) -> gr.components.Component:
    """The control for config key `key`, showing its value in `start`; `ui` adds or replaces presentation options.

    `choices=[...]` offers a list for a text field (still free to type); `radio=True`
    shows a short choice as radio buttons.
    """
    info = field_info(key)
    value = value_at(start, key)
    radio = ui.pop("radio", False)
    options = {"label": label_of(key), "info": info.help, "elem_id": key.replace(".", "-").replace("_", "-"), **ui}
    kind = info.kind
    if kind == "choice":
        return (gr.Radio if radio else gr.Dropdown)(list(info.choices), value=value, **options)
    if kind == "choices":
        return gr.CheckboxGroup(list(info.choices), value=list(value), **options)
    if kind == "bool":
        return gr.Checkbox(value=value, **options)
    if kind in ("int", "float"):
        bounds = {"minimum": info.min if info.min is not None else info.above, "maximum": info.max}
        return gr.Number(value, precision=0 if kind == "int" else None, **{k: v for k, v in bounds.items() if v is not None},
                         **options)
    if kind == "list":
        return gr.Dropdown(list(value), value=list(value), multiselect=True, allow_custom_value=True, **options)
    if "choices" in options:
        return gr.Dropdown(options.pop("choices"), value=value, allow_custom_value=True, **options)
    return gr.Textbox(value, **options)


def more_settings(form: dict, start: RunConfig, sections: tuple[str, ...]) -> None:
    """Controls for every field of `sections` that the tab has not placed: nothing in the config goes unseen."""
    for info in unplaced(form, sections):
        form[info.key] = control(info.key, start)


def unplaced(form: dict, sections: tuple[str, ...]) -> list[FieldInfo]:
    return [info for section in sections for info in config_fields(section)
            if info.key not in form and info.kind != "mapping"]
