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
import re
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml

from studio.config import PROMPT_METHODS, REWARD_PRESETS, RunConfig, parse_devices
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
    return _check_rules(_build(RunConfig, raw, prefix="", source=str(path)), str(path))


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
    return _check_rules(_build(RunConfig, raw, prefix="", source=source), source)


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
    return _check_rules(_build(RunConfig, data, prefix="", source="override"), "override")


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


def _check_rules(cfg: RunConfig, source: str) -> RunConfig:
    """Rules between fields, checked wherever a config is made (recipe, override, UI form)."""
    if cfg.data.eval_path and cfg.data.eval_fraction:
        raise ConfigError(f"{source}: data.eval_path and data.eval_fraction are alternatives: set "
                          "data.eval_fraction=0 to evaluate on the eval file, or leave data.eval_path empty.")
    if not cfg.lora.enabled and cfg.model.load_in != "16bit":
        raise ConfigError(f"{source}: full fine-tuning needs 16-bit weights, but model.load_in is "
                          f"{cfg.model.load_in}. Set lora.enabled=true (QLoRA) or model.load_in=16bit.")
    try:
        devices = parse_devices(cfg.train.devices)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if devices.cpu and cfg.train.parallel == "fsdp":
        raise ConfigError(f"{source}: train.parallel=fsdp shards the model across GPUs, but train.devices is "
                          f"{cfg.train.devices}: use train.parallel=ddp (or auto) on the CPU.")
    if cfg.train.offload_layer_inputs is True and not cfg.train.gradient_checkpointing:
        raise ConfigError(f"{source}: train.offload_layer_inputs keeps the layer inputs gradient checkpointing "
                          "keeps, but train.gradient_checkpointing is off: turn it on, or set "
                          "train.offload_layer_inputs=auto.")
    if cfg.train.early_stopping and not (cfg.data.eval_fraction or cfg.data.eval_path):
        raise ConfigError(f"{source}: train.early_stopping needs eval data: set data.eval_fraction (e.g. 0.1) or "
                          "data.eval_path, or set train.early_stopping=0.")
    return _check_method_rules(cfg, source)


def _check_method_rules(cfg: RunConfig, source: str) -> RunConfig:
    """What each training method needs of the other settings."""
    if cfg.train.method == "galore" and cfg.lora.enabled:
        raise ConfigError(f"{source}: train.method=galore trains every weight: set lora.enabled=false (and "
                          "model.load_in=16bit).")
    if cfg.train.method == "galore" and cfg.galore.layerwise and cfg.train.grad_accum != 1:
        raise ConfigError(f"{source}: galore.layerwise updates each layer in the backward pass, so it cannot "
                          "accumulate gradients: set train.grad_accum=1 (raise train.batch_size instead), or "
                          "galore.layerwise=false.")
    if cfg.train.method in PROMPT_METHODS and not cfg.lora.enabled:
        raise ConfigError(f"{source}: train.method={cfg.train.method} trains a small adapter in front of the "
                          "model, not its weights: set lora.enabled=true (the run keeps an adapter).")
    if cfg.train.method in PROMPT_METHODS and cfg.train.packing:
        raise ConfigError(f"{source}: train.method={cfg.train.method} puts its learned vectors before each row, so "
                          "rows cannot be packed together: set train.packing=false.")
    if cfg.train.method != "sft" and cfg.train.cpu_embeddings:
        raise ConfigError(f"{source}: train.cpu_embeddings works with train.method=sft only: set "
                          "train.cpu_embeddings=false.")
    if cfg.train.method not in ("sft", "galore") and cfg.train.packing:
        raise ConfigError(f"{source}: train.packing packs sft rows; {cfg.train.method} trains on whole answers "
                          "side by side. Set train.packing=false.")
    if cfg.train.method == "grpo":
        _check_grpo(cfg, source)
    if cfg.train.compile_layers is True:
        _check_compile(cfg, source)
    return cfg


_CANNOT_COMPILE = {"8bit": "8-bit weights are not compiled yet",
                   "grpo": "grpo generates between its steps, a new shape at every token",
                   "prefix": "prefix tuning hands each layer learned keys and values through the model's cache",
                   "liger": "Liger's kernels keep torch.compile out of the layers (inductor makes its own)"}


def settings_that_cannot_compile(cfg: RunConfig) -> list[tuple[str, str, str]]:
    """(setting, value, why) for each of the run's settings that compiled decoder layers cannot run with."""
    return [(setting, value, _CANNOT_COMPILE[value])
            for setting, value in (("model.load_in", cfg.model.load_in), ("train.method", cfg.train.method),
                                   ("train.kernels", cfg.train.kernels)) if value in _CANNOT_COMPILE]


def _check_compile(cfg: RunConfig, source: str) -> None:
    """What compiled decoder layers cannot run with (studio.speed.compiled)."""
    for setting, value, why in settings_that_cannot_compile(cfg):
        raise ConfigError(f"{source}: train.compile_layers cannot be used with {setting}={value}: {why}. "
                          f"Set train.compile_layers=false, or change {setting}.")


def _check_grpo(cfg: RunConfig, source: str) -> None:
    """grpo's rules: rewards to learn from, and steps made of whole groups of completions (as TRL requires)."""
    g, t = cfg.grpo, cfg.train
    if not g.rewards and not g.reward_file:
        raise ConfigError(f"{source}: grpo needs at least one reward: set grpo.rewards (one or more of "
                          f"{', '.join(REWARD_PRESETS)}) or grpo.reward_file.")
    if g.reward_file and not g.reward_file.endswith(".py"):
        raise ConfigError(f"{source}: grpo.reward_file must be a Python file (.py), got {g.reward_file!r}.")
    doubled = [name for name in g.rewards if g.rewards.count(name) > 1]
    if doubled:
        raise ConfigError(f"{source}: grpo.rewards names {doubled[0]} twice; give a reward more say with "
                          "grpo.reward_weights instead.")
    completions = t.batch_size * t.grad_accum
    if completions % g.num_generations:
        prompts = max(1, round(completions / g.num_generations))
        raise ConfigError(
            f"{source}: each grpo step trains on train.batch_size x train.grad_accum = {completions} completions, "
            f"which must be whole groups of grpo.num_generations={g.num_generations} completions of one prompt. "
            f"For {prompts} prompt{'s' * (prompts > 1)} per step, set train.batch_size={g.num_generations} and "
            f"train.grad_accum={prompts}, or pick a num_generations that divides {completions}.")
    if (cfg.data.eval_fraction or cfg.data.eval_path) and t.batch_size % g.num_generations:
        raise ConfigError(f"{source}: grpo evaluates train.batch_size={t.batch_size} completions at a time, in whole "
                          f"groups of grpo.num_generations={g.num_generations}: with eval data, set train.batch_size "
                          "to a multiple of grpo.num_generations.")
    if g.beta and not cfg.lora.enabled:
        raise ConfigError(f"{source}: grpo.beta > 0 with full fine-tuning needs a second copy of the model as the KL "
                          "reference. Train LoRA (lora.enabled=true: the reference is then the adapter switched off, "
                          "no copy) or set grpo.beta=0.")
    if t.early_stopping:
        raise ConfigError(f"{source}: train.early_stopping follows the eval loss, which says little for grpo (its "
                          "loss stays near 0); set train.early_stopping=0 and follow the reward.")
    if "regex" in g.rewards:
        if not g.regex:
            raise ConfigError(f"{source}: grpo.rewards has regex, but grpo.regex is empty: give the pattern.")
        try:
            re.compile(g.regex)
        except re.error as exc:
            raise ConfigError(f"{source}: grpo.regex {g.regex!r} is not a valid pattern: {exc}.") from None
    if "length" in g.rewards and not (g.length_min or g.length_max):
        raise ConfigError(f"{source}: grpo.rewards has length: set grpo.length_min and/or grpo.length_max (tokens).")
    if g.length_max and g.length_min > g.length_max:
        raise ConfigError(f"{source}: grpo.length_min ({g.length_min}) is above grpo.length_max ({g.length_max}).")
    if g.reward_weights and not g.reward_file and len(g.reward_weights) != len(g.rewards):
        raise ConfigError(f"{source}: grpo.reward_weights has {len(g.reward_weights)} weights for "
                          f"{len(g.rewards)} rewards ({', '.join(g.rewards)}): give one per reward, in order.")


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
