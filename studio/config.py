"""One typed configuration for a run: model, data, LoRA, training, generation, export.

Recipes are YAML files holding only what differs from these defaults. Loading is
strict: an unknown key is an error naming it and the closest valid key, a value
of the wrong type is an error naming the key. The same dotted overrides work on
the command line, in the UI and in tests:

    cfg = load_recipe("recipes/quickstart.yaml", ["lora.r=32", "train.max_steps=60"])
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from studio.errors import ConfigError


def _f(default: Any, help: str, min: float | None = None, max: float | None = None, above: float | None = None) -> Any:
    """A dataclass field with a help string (shown by `launch.py ... --help` and the UI) and optional bounds.

    `min`/`max` are inclusive bounds, `above` an exclusive lower bound; every
    config is checked against them however it was made (recipe, override, form).
    """
    metadata = {"help": help, "min": min, "max": max, "above": above}
    if isinstance(default, (list, dict, tuple)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class ModelConfig:
    name_or_path: str = _f("", "Local HF folder, a .gguf file, or a hub id (hub ids need a network).")
    load_in: Literal["16bit", "8bit", "4bit"] = _f(
        "16bit", "Weight precision when loading: 16bit, 8bit or 4bit (nf4, bitsandbytes). 4bit + LoRA is QLoRA."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = _f(
        "auto", "Compute dtype. auto: bfloat16 on GPUs that support it, else float16; float32 on CPU."
    )
    trust_remote_code: bool = _f(
        False,
        "Run the Python code a model folder or hub repo ships (auto_map in its config.json). Such code runs with "
        "your rights: set true only for a model whose code you trust. false refuses such a model.",
    )
    allow_pickle: bool = _f(
        False,
        "Also load weights stored as pickle files (pytorch_model.bin), which can run code when loaded. false "
        "loads safetensors only and refuses a model that has nothing else.",
    )


@dataclass(frozen=True)
class DataConfig:
    path: str = _f(
        "",
        "Dataset: a file (jsonl, json, csv, tsv, parquet, txt), a folder saved by datasets' save_to_disk, a glob "
        "(data/*.jsonl), a hub dataset id (needs a network), or several of these separated by commas.",
    )
    format: Literal["auto", "alpaca", "messages", "sharegpt", "prompt_completion", "preference", "labelled", "prompts",
                    "text", "fields"] = _f(
        "auto",
        "Row format; auto detects it from the columns. preference: prompt/chosen/rejected pairs (texts or message "
        "lists) for dpo, orpo and kto; sft trains on the prompt and the chosen response. labelled: "
        "prompt/completion/label rows, the label true for a good response and false for a bad one (kto). prompts: "
        "a prompt (a text or a message list) with no response, for grpo; its other columns (an answer, ...) go to "
        "the rewards. fields: each row through a format-string template (auto picks it when data.template is one).",
    )
    template: str = _f(
        "auto",
        "Prompt template: auto (the model's own chat template, else alpaca), model, a gallery name (alpaca, chatml, "
        "llama3, gemma, mistral, phi3, vicuna, plain), a .jinja file, Jinja text, or a format string with named "
        "fields, e.g. 'Summarize:\\n{dialogue}\\nSummary: {summary}': the last field is the response, the others "
        "make the prompt (no literal braces in a format string).",
    )
    train_on: Literal["responses", "all"] = _f(
        "responses", "Compute the loss on the responses only (instruction data) or on every token."
    )
    max_samples: int = _f(0, "Use at most this many rows (0: all).", min=0)
    eval_fraction: float = _f(0.0, "Fraction of rows held out for evaluation (0: no eval split).", min=0, max=0.9)
    eval_path: str = _f(
        "", "A separate eval dataset (same forms as path, same format as the training data); instead of eval_fraction."
    )
    shuffle_seed: int = _f(3407, "Seed for the shuffle before the train/eval split.")
    columns: dict[str, str] = _f(
        {}, "Column mapping when names differ: {instruction: Question Text, output: Answer} (format field: file column)."
    )
    split: str = _f("train", "Split to read from a hub dataset or a saved DatasetDict folder.")
    subset: str = _f("", "Subset (configuration) of a hub dataset, e.g. wikitext-2-raw-v1 (empty: its default).")
    text_unit: Literal["auto", "line", "block"] = _f(
        "auto",
        "How a .txt file splits into documents: line (one per line), block (blocks of lines between blank lines), "
        "auto (block when the file's first MB has a blank line between text, else line).",
    )
    max_bad_fraction: float = _f(
        0.1,
        "Malformed rows (bad JSON, a missing column, an unknown role, a row the template cannot render) are reported "
        "with file and line and skipped, up to this fraction of the rows; more than that stops loading. 0: the "
        "first malformed row stops loading.",
    )
    max_row_chars: int = _f(
        1_000_000,
        "Longest row in characters (a JSONL line, a CSV record, a .txt document, a JSON item). A longer row is "
        "skipped as malformed, with its file:line and length, and never read whole into memory. 1,000,000 is about "
        "250k tokens, far past any max_length; raise it only for data with very long documents.",
        min=1,
    )


@dataclass(frozen=True)
class LoraConfig:
    enabled: bool = _f(True, "Train a LoRA adapter. false trains all weights (full fine-tuning).")
    r: int = _f(16, "LoRA rank: capacity of the adapter (8-64 typical).", min=1)
    alpha: int = _f(16, "LoRA alpha: scale of the update (alpha / r, or alpha / sqrt(r) with rsLoRA).")
    dropout: float = _f(0.0, "Dropout on the LoRA input.", min=0, max=0.9)
    target_modules: tuple[str, ...] = _f(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        "Module names that get adapters; ['all-linear'] for every linear layer but the output head.",
    )
    use_rslora: bool = _f(False, "Rank-stabilised LoRA (scale alpha / sqrt(r)).")
    use_dora: bool = _f(False, "DoRA: weight-decomposed LoRA (slower, sometimes better).")


@dataclass(frozen=True)
class TrainConfig:
    method: Literal["sft", "dpo", "orpo", "kto", "grpo"] = _f(
        "sft", "Training method. sft: learn the responses of instruction or chat rows. dpo: prefer the chosen over "
        "the rejected response of preference pairs, measured against the model before training (the adapter "
        "switched off: no second copy in memory). orpo: the same pairs, SFT on the chosen side plus an odds-ratio "
        "penalty on the rejected side, no reference pass. kto: unpaired responses labelled good or bad. grpo: "
        "sample several completions of each prompt, score them with rewards (the grpo section) and learn from the "
        "better ones; prompt rows with an optional answer, or instruction, chat and pair rows (their response is "
        "the answer)."
    )
    batch_size: int = _f(2, "Rows per device per step (grpo: completions, grpo.num_generations of each prompt).",
                         min=1)
    grad_accum: int = _f(4, "Gradient accumulation steps (effective batch = batch_size * grad_accum).", min=1)
    max_steps: int = _f(60, "Optimizer steps to run; 0 runs `epochs` full passes instead.", min=0)
    epochs: float = _f(1.0, "Passes over the data when max_steps is 0.", above=0)
    learning_rate: float = _f(2e-4, "Peak learning rate.", above=0)
    warmup_steps: int = _f(5, "Linear warm-up steps.", min=0)
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = _f("linear", "LR schedule.")
    optimizer: Literal["auto", "adamw_torch", "adamw_8bit", "paged_adamw_8bit", "sgd"] = _f(
        "auto", "Optimizer. auto: adamw_8bit on CUDA, adamw_torch elsewhere."
    )
    weight_decay: float = _f(0.01, "Weight decay.", min=0)
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0: no clipping).", min=0)
    seed: int = _f(3407, "Random seed.")
    max_length: int = _f(1024, "Longest sequence in tokens; longer rows are cut. grpo: the longest prompt (longer "
                         "prompts are left out); completions add up to grpo.max_completion_length.", min=8)
    packing: bool = _f(False, "Pack several short rows into one sequence (faster on short data).")
    gradient_checkpointing: bool = _f(True, "Recompute activations in backward: less memory, ~25% slower.")
    selective_checkpointing: bool = _f(
        False, "With checkpointing, keep attention outputs instead of recomputing them (faster on long rows)."
    )
    feed_forward_slice: int = _f(
        8192, "Rows longer than this run their feed-forward blocks in slices of this many tokens, recomputed in "
        "backward: same results, far less memory on long rows (0: off)."
    )
    offload_activations: bool = _f(
        False, "Keep activations in CPU memory during the step (CUDA): much longer sequences fit, a little slower."
    )
    kernels: Literal["auto", "liger", "none"] = _f(
        "auto", "Fused Triton kernels for RMSNorm, RoPE and SwiGLU (Liger Kernel, CUDA). auto: when installed."
    )
    cpu_embeddings: bool = _f(
        False, "LoRA on CUDA: keep the input embedding table in CPU memory when the model has a separate output "
        "head: ~1 GiB less GPU memory on 8B models, same results, but each step waits for the lookup (up to 30% slower)."
    )
    fused_lora: Literal["auto", True, False] = _f(
        "auto", "Fused LoRA layers: the adapter's term accumulated into the base matrix multiply, with a hand-written "
        "backward (same results, fewer GPU kernels). auto: on with CUDA when lora.dropout is 0 and DoRA is off; "
        "true/on, false/off."
    )
    logging_steps: int = _f(1, "Log loss, LR and memory every this many steps.", min=1)
    eval_steps: int = _f(20, "Evaluate every this many steps (with data.eval_fraction > 0 or data.eval_path).", min=1)
    save_steps: int = _f(20, "Save a checkpoint every this many steps.", min=1)
    save_total_limit: int = _f(2, "Keep at most this many checkpoints (oldest are removed; 0 keeps all).", min=0)
    early_stopping: int = _f(
        0, "Stop when the eval loss has not improved for this many evaluations, and keep the best weights "
        "(needs eval data; 0: off).", min=0)
    runs_dir: str = _f("runs", "Folder that holds run folders.")


@dataclass(frozen=True)
class PreferenceConfig:
    beta: float = _f(
        0.1, "dpo and kto: how far training may move from the reference model (higher: closer to it; 0.1 typical). "
        "orpo: the weight (lambda) of the odds-ratio term beside the SFT loss (0.1 typical).", above=0)
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust", "sppo_hard", "apo_zero", "apo_down"] = _f(
        "sigmoid", "dpo's loss: sigmoid (the DPO paper), ipo (less prone to overfitting on pairs the model "
        "already separates), hinge (SLiC), robust (noisy labels: with label_smoothing), sppo_hard, apo_zero / "
        "apo_down (anchored: apo_zero when the chosen answers are better than the model's, apo_down when not).")
    label_smoothing: float = _f(
        0.0, "dpo with loss_type robust: the share of pairs whose labels are believed flipped (0.1 typical).",
        min=0, max=0.49)
    precompute_reference: bool = _f(
        False, "dpo and kto: score the training pairs with the reference model once before training, instead of "
        "at every step: each step is a bit faster, at the cost of one pass over the data at the start.")
    desirable_weight: float = _f(
        1.0, "kto: weight of the loss on good responses; raise it when bad ones far outnumber them.", above=0)
    undesirable_weight: float = _f(
        1.0, "kto: weight of the loss on bad responses; raise it when good ones far outnumber them.", above=0)


# grpo's built-in rewards (studio.train.rewards), each scoring a completion from 0 to 1.
REWARD_PRESETS = ("answer_match", "format", "regex", "json", "length")


@dataclass(frozen=True)
class GrpoConfig:
    num_generations: int = _f(
        4, "Completions sampled for each prompt. GRPO learns from how their rewards differ within this group: more "
        "give a clearer signal and cost more time. Each step trains on train.batch_size x train.grad_accum "
        "completions, which must be a multiple of this (8 completions of 4 each: 2 prompts per step).", min=2)
    max_completion_length: int = _f(
        256, "Longest completion in tokens; generation stops there (a cut completion usually earns less).", min=1)
    temperature: float = _f(
        1.0, "Sampling temperature of the completions: higher gives more varied completions (more to learn from), "
        "lower keeps them near the model's first choice.", above=0, max=2)
    beta: float = _f(
        0.0, "Weight of the KL penalty that keeps the model near the model before training (with LoRA: the adapter "
        "switched off, no second copy). 0: no penalty and no reference pass, faster (TRL's default); 0.001 to 0.04 "
        "when the rewards can be gamed.", min=0)
    rewards: tuple[Literal[REWARD_PRESETS], ...] = _f(
        ("answer_match",), "Built-in rewards, each 0 to 1 per completion. answer_match: the completion's answer (the "
        "part in <answer>...</answer> when there is one) equals the row's answer (grpo.answer_column), as text or as "
        "a number (42 = 42.0, the last number of the completion). format: <think>...</think><answer>...</answer>. "
        "regex: contains grpo.regex. json: valid JSON, following grpo.json_schema when set. length: between "
        "grpo.length_min and grpo.length_max tokens.")
    reward_weights: tuple[float, ...] = _f(
        (), "Weight of each reward in the total, in order: grpo.rewards, then the functions of grpo.reward_file "
        "(empty: all 1).")
    reward_file: str = _f(
        "", "A Python file of your own rewards: every public function taking (completions, **kwargs) and returning "
        "one number (or None: does not apply) per completion. kwargs hold prompts, completion_ids and the data's "
        "columns (answer, ...). The file runs as code with your rights.")
    answer_column: str = _f(
        "answer", "The data column answer_match compares with. Prompt rows keep their columns; instruction, chat "
        "and pair rows give their response as 'answer'.")
    regex: str = _f("", "regex reward: a pattern the completion must contain (Python re.search; ^...$ for the whole "
                        "completion).")
    json_schema: str = _f(
        "", "json reward: a JSON schema (a .json file or the JSON text) the completion must follow: type, required, "
        "properties, items, enum. Empty: any valid JSON.")
    length_min: int = _f(0, "length reward: fewest tokens for the full reward (a shorter completion earns "
                            "length / length_min).", min=0)
    length_max: int = _f(0, "length reward: most tokens for the full reward (a longer one earns less, nothing at "
                            "twice this; 0: no upper limit).", min=0)


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = _f(128, "Longest reply in tokens.", min=1)
    temperature: float = _f(0.0, "Sampling temperature; 0 is greedy (reproducible comparisons).", min=0)
    top_p: float = _f(0.9, "Nucleus sampling (when temperature > 0).")
    top_k: int = _f(40, "Top-k sampling (when temperature > 0).")
    repetition_penalty: float = _f(1.0, "Penalty for repeated tokens (1.0: none).")
    system_prompt: str = _f("", "System message put before the conversation (empty: none).")
    seed: int = _f(0, "Sampling seed.")


# GGUF types, least to most precise: the k-quants are made by llama.cpp's quantizer, the rest by its converter.
GGUF_TYPES = ("q4_k_m", "q5_k_m", "q6_k", "q8_0", "bf16", "f16")


@dataclass(frozen=True)
class ExportConfig:
    formats: tuple[Literal["adapter", "merged_16bit", "merged_4bit"], ...] = _f(
        (), "Non-GGUF exports: adapter, merged_16bit, merged_4bit."
    )
    gguf: tuple[Literal[("auto", *GGUF_TYPES)], ...] = _f(
        ("auto",),
        f"GGUF types: {', '.join(GGUF_TYPES)}, or auto: q8_0 for models under 1B parameters (4-bit "
        "loses a small model's fine-tune), q4_k_m from 1B. Each file's report card says whether the fine-tune "
        "survived.",
    )
    verify_tokens: int = _f(16, "Greedy tokens compared between llama.cpp and the HF model per prompt.")
    ollama_modelfile: bool = _f(True, "Write an Ollama Modelfile beside each GGUF.")


@dataclass(frozen=True)
class RunConfig:
    name: str = _f("run", "Run name; the run folder is runs/<time>_<name>/.")
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "The model to fine-tune."})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "The training data."})
    lora: LoraConfig = field(default_factory=LoraConfig, metadata={"help": "Adapter settings."})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "Training hyper-parameters."})
    preference: PreferenceConfig = field(default_factory=PreferenceConfig,
                                         metadata={"help": "Settings of the preference methods: dpo, orpo, kto."})
    grpo: GrpoConfig = field(default_factory=GrpoConfig, metadata={"help": "Settings of grpo: sampling and rewards."})
    generation: GenerationConfig = field(default_factory=GenerationConfig, metadata={"help": "Chat settings."})
    export: ExportConfig = field(default_factory=ExportConfig, metadata={"help": "Export settings."})


# ---------------------------------------------------------------- the fields, for the CLI and the UI


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
    _raise_unknown(key, key.rsplit(".", 1)[-1], [i.key for i in config_fields()])


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


# ---------------------------------------------------------------- loading


def load_recipe(path: str | Path, overrides: typing.Sequence[str] = ()) -> RunConfig:
    """Read a YAML recipe strictly, then apply dotted `key=value` overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Recipe not found: {path}. Pass the path of a .yaml file, e.g. recipes/quickstart.yaml.")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (model:, data:, ...), not {type(raw).__name__}.")
    # Rules between fields are checked once the overrides are in: an override may be what satisfies them.
    return apply_overrides(_build(RunConfig, raw, prefix="", source=str(path)), overrides)


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
                _raise_unknown(key, part, [name for name in hints if name not in sections])
            node[part] = value
            return
        containers = sections + [name for name, hint in hints.items() if typing.get_origin(hint) is dict]
        if part not in containers:
            _raise_unknown(key, part, containers)
        node, cls = node[part], hints[part]


def with_changes(section: Any, **changes: Any) -> Any:
    """A copy of a config section with some fields changed, each checked like a recipe value (type and bounds)."""
    cls = type(section)
    hints = typing.get_type_hints(cls)
    checked = {}
    for name, value in changes.items():
        if name not in hints:
            _raise_unknown(name, name, [f.name for f in dataclasses.fields(cls)])
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


def field_help(section: str, name: str) -> str:
    """Help text of a field, e.g. field_help('lora', 'r')."""
    section_cls = typing.get_type_hints(RunConfig)[section]
    return next(f.metadata["help"] for f in dataclasses.fields(section_cls) if f.name == name)


def _raise_unknown(full_key: str, name: str, valid: list[str]) -> typing.NoReturn:
    # Typos by spelling ("lerning_rate"), and by length ("rank" for "r").
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5) or [
        k for k in sorted(valid, key=len, reverse=True) if name.startswith(k) or k.startswith(name)
    ]
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"Unknown key {full_key!r}.{hint} Valid keys here: {', '.join(sorted(valid))}.")


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'the top level'} must be a mapping, got {raw!r}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            _raise_unknown(f"{prefix}{key}", str(key), names)
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
    if cfg.train.early_stopping and not (cfg.data.eval_fraction or cfg.data.eval_path):
        raise ConfigError(f"{source}: train.early_stopping needs eval data: set data.eval_fraction (e.g. 0.1) or "
                          "data.eval_path, or set train.early_stopping=0.")
    if cfg.train.method != "sft" and (cfg.train.packing or cfg.train.cpu_embeddings):
        setting = "train.packing" if cfg.train.packing else "train.cpu_embeddings"
        raise ConfigError(f"{source}: {setting} works with train.method=sft only; {cfg.train.method} trains on "
                          f"whole answers side by side. Set {setting}=false.")
    if cfg.train.method == "grpo":
        _check_grpo(cfg, source)
    return cfg


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
