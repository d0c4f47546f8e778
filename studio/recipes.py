"""Making a RunConfig: recipes read strictly, dotted overrides, typed changes, and recipes written back.

Recipes are YAML files holding only what differs from the defaults. Loading is
strict: an unknown key is an error naming it and the closest valid key, a value
of the wrong type or out of its bounds is an error naming the key. The same
dotted overrides work on the command line, in the UI and in tests:

    cfg = load_recipe("recipes/quickstart.yaml", ["lora.r=32", "train.max_steps=60"])
    cfg = apply_overrides(cfg, ["data.columns.instruction=Question Text"])
    gen = with_changes(cfg.generation, max_new_tokens=64)      # checked like a recipe value
    save_config(cfg, run_dir / "config.yaml")                  # the fully resolved config
    load_saved_config(run_dir / "config.yaml")                 # read back, keys of older versions dropped
    recipe_text(cfg)                                           # only what differs from the defaults
"""

from __future__ import annotations

import dataclasses
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml

from studio.config import RunConfig
from studio.config_rules import check_rules
from studio.errors import ConfigError
from studio.fields import unknown_key

# Keys older versions of the studio had. A recipe or run folder holding one still loads, without it: a recipe
# with a note (a RetiredKeyWarning), a run's own config.yaml silently. An override naming one is refused.
RETIRED_KEYS = {
    "train.runs_dir": "where runs are kept is not a training setting any more: runs go to the folder given by "
                      "--runs-dir (default runs/).",
}


class RetiredKeyWarning(UserWarning):
    """A recipe names a key that older versions had; it was dropped (the message says what replaces it)."""


def load_recipe(path: str | Path, overrides: typing.Sequence[str] = ()) -> RunConfig:
    """Read a YAML recipe strictly, then apply dotted `key=value` overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Recipe not found: {path}. Pass the path of a .yaml file, e.g. recipes/quickstart.yaml.")
    raw = _read_yaml(path)
    for key in _drop_retired(raw):
        warnings.warn(f"{path}: {key} is ignored: {RETIRED_KEYS[key]} Remove it from the recipe.", RetiredKeyWarning,
                      stacklevel=2)
    # Rules between fields are checked once the overrides are in: an override may be what satisfies them.
    return apply_overrides(_build(RunConfig, raw, prefix="", source=str(path)), overrides)


def load_saved_config(path: str | Path) -> RunConfig:
    """A config.yaml the studio wrote (a run's fully resolved config); keys of older versions are dropped."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config not found: {path}.")
    raw = _read_yaml(path)
    _drop_retired(raw)
    return check_rules(_build(RunConfig, raw, prefix="", source=str(path)), str(path))


def _read_yaml(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (model:, data:, ...), not {type(raw).__name__}.")
    return raw


def _drop_retired(raw: dict) -> list[str]:
    """Remove the retired keys from recipe data; returns those that were there."""
    found = []
    for key in RETIRED_KEYS:
        section, name = key.split(".")
        if isinstance(raw.get(section), dict) and name in raw[section]:
            del raw[section][name]
            found.append(key)
    return found


def from_dict(raw: dict, source: str = "config") -> RunConfig:
    """Build a RunConfig from nested plain data, checking every key, type and bound."""
    return check_rules(_build(RunConfig, raw, prefix="", source=source), source)


def apply_overrides(cfg: RunConfig, overrides: typing.Sequence[str]) -> RunConfig:
    """Apply `section.key=value` strings; values are parsed as YAML scalars/lists.

    A key under a mapping field sets one entry of it: data.columns.instruction="Question Text"
    (an empty value removes the entry).
    """
    data = to_dict(cfg)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"Override {item!r} must look like section.key=value, e.g. lora.r=32.")
        if key.strip() in RETIRED_KEYS:
            raise ConfigError(f"{key.strip()} is no longer a setting: {RETIRED_KEYS[key.strip()]}")
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            parsed = value
        _set_dotted(data, key.strip().split("."), parsed)
    return check_rules(_build(RunConfig, data, prefix="", source="override"), "override")


def _set_dotted(data: dict, parts: list[str], value: Any) -> None:
    """Set data[a][b][c] = value for the key a.b.c, walking the config's types so every name is checked."""
    node, cls = data, RunConfig
    for i, part in enumerate(parts):
        key, last = ".".join(parts[: i + 1]), i == len(parts) - 1
        if typing.get_origin(cls) is dict:  # a mapping field: any name is an entry of it
            if not last:
                raise ConfigError(f"Unknown key {'.'.join(parts)!r}: {'.'.join(parts[:i])} holds plain entries, "
                                  f"e.g. {'.'.join(parts[:i])}.{part}=value.")
            if value == "":
                node.pop(part, None)
            else:
                node[part] = value
            return
        hints = typing.get_type_hints(cls)
        sections = [name for name, hint in hints.items() if dataclasses.is_dataclass(hint)]
        if last:
            if part not in hints or part in sections:
                raise unknown_key(key, part, [name for name in hints if name not in sections])
            node[part] = value
            return
        containers = sections + [name for name, hint in hints.items() if typing.get_origin(hint) is dict]
        if part not in containers:
            raise unknown_key(key, part, containers)
        node, cls = node[part], hints[part]


def with_changes(section: Any, **changes: Any) -> Any:
    """A copy of a config section with some fields changed, each checked like a recipe value (type and bounds)."""
    cls = type(section)
    hints = typing.get_type_hints(cls)
    checked = {}
    for name, value in changes.items():
        if name not in hints:
            raise unknown_key(name, name, [f.name for f in dataclasses.fields(cls)])
        checked[name] = _coerce(value, hints[name], name, cls.__name__)
        _check_bounds(cls, name, checked[name], name, cls.__name__)
    return dataclasses.replace(section, **checked)


def replace_section(cfg: RunConfig, section: str, **changes: Any) -> RunConfig:
    """A copy of `cfg` with some fields of one section changed (values already typed)."""
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **changes)})


def to_dict(cfg: Any) -> dict:
    """Plain nested data (tuples become lists) for YAML and JSON."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, dict):
            value = dict(value)
        out[f.name] = value
    return out


def differences(cfg: RunConfig) -> dict:
    """Only what differs from the defaults, nested: what a recipe needs to say."""
    ours, defaults = to_dict(cfg), to_dict(RunConfig())
    out: dict = {}
    for section, value in ours.items():
        if isinstance(value, dict):
            changed = {k: v for k, v in value.items() if v != defaults[section][k]}
            if changed:
                out[section] = changed
        elif value != defaults[section]:
            out[section] = value
    return out


def recipe_text(cfg: RunConfig) -> str:
    """A recipe holding only what differs from the defaults."""
    return yaml.safe_dump(differences(cfg), sort_keys=False, allow_unicode=True)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the fully resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True), encoding="utf-8")



def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'the top level'} must be a mapping, got {raw!r}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            raise unknown_key(f"{prefix}{key}", str(key), names)
    kwargs = {}
    for name in names:
        if name not in raw:
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, raw[name] or {}, f"{prefix}{name}.", source)
        else:
            kwargs[name] = _coerce(raw[name], hint, f"{prefix}{name}", source)
            _check_bounds(cls, name, kwargs[name], f"{prefix}{name}", source)
    return cls(**kwargs)


def _check_bounds(cls: type, name: str, value: Any, key: str, source: str) -> None:
    meta = next(f.metadata for f in dataclasses.fields(cls) if f.name == name)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    low, high, above = meta.get("min"), meta.get("max"), meta.get("above")
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"{source}: {key} must be a finite number, got {value!r}.")
    if low is not None and value < low:
        raise ConfigError(f"{source}: {key} must be at least {low:g}, got {value!r}.")
    if high is not None and value > high:
        raise ConfigError(f"{source}: {key} must be at most {high:g}, got {value!r}.")
    if above is not None and value <= above:
        raise ConfigError(f"{source}: {key} must be more than {above:g}, got {value!r}.")


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check `value` against a field's type hint; convert only where it is lossless."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)

    def fail(expected: str) -> typing.NoReturn:
        raise ConfigError(f"{source}: {key} must be {expected}, got {value!r}.")

    if origin is Literal:
        if value not in args:
            fail("one of " + ", ".join(repr(a) for a in args))
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, source)
    if origin is dict:
        if not isinstance(value, dict):
            fail("a mapping (name: value)")
        return {str(k): _coerce(v, args[1], f"{key}.{k}", source) for k, v in value.items()}
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            fail("a list")
        return tuple(_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            fail("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail("a whole number")
        return value
    if hint is float:
        if isinstance(value, bool):
            fail("a number")
        if not isinstance(value, (int, float)):
            # YAML reads 2e-4 (no dot) as a string: accept numeric strings.
            try:
                return float(value)
            except (TypeError, ValueError):
                fail("a number")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            fail("text")
        return str(value)
    raise AssertionError(f"unsupported config type {hint} for {key}")
