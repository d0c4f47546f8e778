"""Rules between a RunConfig's fields, and what a few values stand for.

check_rules runs wherever a config is made (recipe, override, UI form), so a
setting the others rule out is refused before anything loads. Beside the rules:
optimizer_for (train.optimizer=auto), parse_devices (train.devices) and
settings_that_cannot_compile (what train.compile_layers cannot run with).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from studio.config import PROMPT_METHODS, REWARD_PRESETS, RunConfig
from studio.errors import ConfigError


def optimizer_for(setting: str, cuda: bool) -> str:
    """The optimizer a train.optimizer setting stands for: auto is 8-bit AdamW on CUDA, adamw_torch elsewhere."""
    if setting != "auto":
        return setting
    return "adamw_8bit" if cuda else "adamw_torch"


@dataclass(frozen=True)
class DeviceRequest:
    """train.devices read: the CPU (with a number of processes) or a list of GPU indices, or every GPU (auto)."""

    cpu: bool = False
    cpu_processes: int = 1
    gpus: tuple[int, ...] | None = None  # None: every GPU CUDA sees


def parse_devices(text: str) -> DeviceRequest:
    """auto, cpu, cpu:N or GPU indices such as 0,1 (ConfigError for anything else)."""
    value = text.strip().lower().replace(" ", "")
    if value == "auto":
        return DeviceRequest()
    match = re.fullmatch(r"cpu(?::(\d+))?", value)
    if match:
        processes = int(match.group(1) or 1)
        if processes < 1:
            raise ConfigError("train.devices=cpu:N needs N of 1 or more processes.")
        return DeviceRequest(cpu=True, cpu_processes=processes)
    if re.fullmatch(r"\d+(,\d+)*", value):
        gpus = tuple(int(i) for i in value.split(","))
        if len(set(gpus)) != len(gpus):
            raise ConfigError(f"train.devices={text} names a GPU twice: list each index once, e.g. 0,1.")
        return DeviceRequest(gpus=gpus)
    raise ConfigError(f"train.devices={text!r} is not a device list: use auto, cpu, cpu:2 or GPU indices such as 0,1.")


def check_rules(cfg: RunConfig, source: str) -> RunConfig:
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
