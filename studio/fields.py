"""The fields of the config as the CLI lists them and the UI renders them: type, choices, default, bounds, help.

Everything here is read from the dataclasses of studio.config, so a field added
there shows up in `launch.py keys`, the UI's form and saved recipes with no
other edit:

    field_info("train.learning_rate").type_text()    # "float > 0"
    [info.key for info in config_fields("lora")]      # "lora.enabled", "lora.r", ...
    value_at(cfg, "data.columns.instruction")
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass
from typing import Any, Literal

from studio.config import RunConfig
from studio.errors import ConfigError


@dataclass(frozen=True)
class FieldInfo:
    """One config key as the CLI lists it and the UI renders it: type, choices, default, bounds, help."""

    key: str  # "train.learning_rate"
    hint: Any
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    above: float | None = None

    @property
    def choices(self) -> tuple | None:
        """The allowed values of a choice (a Literal), or of each item of a list of choices."""
        hint = self.hint
        if typing.get_origin(hint) is tuple:
            hint = typing.get_args(hint)[0]
        return typing.get_args(hint) if typing.get_origin(hint) is Literal else None

    @property
    def kind(self) -> str:
        """choice, choices (several of a list), bool, int, float, text, list (free items) or mapping."""
        origin = typing.get_origin(self.hint)
        if origin is Literal:
            return "choice"
        if origin is tuple:
            return "choices" if self.choices else "list"
        if origin is dict:
            return "mapping"
        return {bool: "bool", int: "int", float: "float"}.get(self.hint, "text")

    def type_text(self) -> str:
        if self.choices:
            return ("list of " if self.kind == "choices" else "") + " | ".join(map(str, self.choices))
        bounds = [f">= {self.min:g}" if self.min is not None else "", f"> {self.above:g}" if self.above is not None else "",
                  f"<= {self.max:g}" if self.max is not None else ""]
        return " ".join([self.kind, *filter(None, bounds)])


def config_fields(section: str | None = None) -> list[FieldInfo]:
    """Every key of the config (or of one section), in the order the dataclasses declare them."""
    out = []
    for top in dataclasses.fields(RunConfig):
        hint = typing.get_type_hints(RunConfig)[top.name]
        if not dataclasses.is_dataclass(hint):
            if section in (None, ""):
                out.append(_info(top.name, hint, top))
            continue
        if section not in (None, top.name):
            continue
        hints = typing.get_type_hints(hint)
        out += [_info(f"{top.name}.{f.name}", hints[f.name], f) for f in dataclasses.fields(hint)]
    return out


def field_info(key: str) -> FieldInfo:
    for info in config_fields():
        if info.key == key:
            return info
    raise unknown_key(key, key.rsplit(".", 1)[-1], [i.key for i in config_fields()])


def sections() -> list[str]:
    return [f.name for f in dataclasses.fields(RunConfig) if dataclasses.is_dataclass(typing.get_type_hints(RunConfig)[f.name])]


def value_at(cfg: RunConfig, key: str) -> Any:
    """The value of a dotted key, e.g. value_at(cfg, "lora.r"); an entry of a mapping for "data.columns.x"."""
    node: Any = cfg
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else getattr(node, part)
    return node


def _info(key: str, hint: Any, f: dataclasses.Field) -> FieldInfo:
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    meta = f.metadata
    return FieldInfo(key, hint, default, meta.get("help", ""), meta.get("min"), meta.get("max"), meta.get("above"))


def field_help(section: str, name: str) -> str:
    """Help text of a field, e.g. field_help('lora', 'r')."""
    section_cls = typing.get_type_hints(RunConfig)[section]
    return next(f.metadata["help"] for f in dataclasses.fields(section_cls) if f.name == name)


def unknown_key(full_key: str, name: str, valid: list[str]) -> ConfigError:
    """The error for a key that is not in the config: it names the key, the closest valid one and all of them."""
    # Typos by spelling ("lerning_rate"), and by length ("rank" for "r").
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5) or [
        k for k in sorted(valid, key=len, reverse=True) if name.startswith(k) or k.startswith(name)
    ]
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"Unknown key {full_key!r}.{hint} Valid keys here: {', '.join(sorted(valid))}.")
