"""The run form: components of several tabs that together make one RunConfig.

Each tab registers its form components under their dotted config keys
(`form["lora.r"] = gr.Number(...)`). A handler that needs the config takes
`*form.values()` as inputs and calls `config_from_form(form_keys, values)`.
"""

from __future__ import annotations

from studio.config import RunConfig
from studio.fields import value_at
from studio.recipes import from_dict


def config_from_form(keys: list[str], values: tuple) -> RunConfig:
    """Nested dict from dotted keys, then the strict typed loader (a bad value names its key)."""
    raw: dict = {}
    for key, value in zip(keys, values):
        if key.startswith("data.columns.") and not value:
            continue  # an empty mapping dropdown: the column is used as it is named
        node = raw
        *sections, name = key.split(".")
        for section in sections:
            node = node.setdefault(section, {})
        if isinstance(value, float) and value.is_integer() and _is_int_field(key):
            value = int(value)
        node[name] = value
    return from_dict(raw, source="form")


def form_values(keys: list[str], cfg: RunConfig) -> list:
    """The value each form control shows for `cfg` (the inverse of config_from_form)."""
    values = []
    for key in keys:
        value = value_at(cfg, key)
        if key.startswith("data.columns."):
            value = value or ""  # an unmapped column: the empty choice
        values.append(list(value) if isinstance(value, tuple) else value)
    return values


def _is_int_field(key: str) -> bool:
    import dataclasses
    import typing

    if key.count(".") != 1:
        return False
    section, name = key.split(".")
    cls = typing.get_type_hints(RunConfig)[section]
    return typing.get_type_hints(cls)[name] is int and any(f.name == name for f in dataclasses.fields(cls))


def named(handler, keys: list[str], leading: tuple[str, ...] = ()):
    """Give a `*values` handler a signature with one parameter per form key ("lora.r" -> lora_r).

    Gradio names API parameters after the handler's signature, so gradio_client
    can call e.g. `predict(api_name="/start_training", lora_r=8, train_max_steps=10)`.
    """
    import inspect

    names = [*leading, *(key.replace(".", "_") for key in keys)]
    handler.__signature__ = inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names]
    )
    return handler
