"""One typed configuration for a run: model, data, LoRA, training, generation, export.

Frozen dataclasses, the only place a choice list, default, bound or help text
lives. Recipes (YAML) and dotted overrides become a RunConfig in studio.recipes;
studio.fields lists the fields for the CLI and the UI; studio.config_rules holds
the rules between fields and what a few values stand for.

    cfg = RunConfig()                       # the defaults
    cfg.train.learning_rate, cfg.lora.r
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


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


# Methods that read a preference pair's two answers side by side: two sequences per row.
PAIRED_METHODS = ("dpo", "orpo")
# Methods whose adapter is a learned prompt, not a change of the weights: it cannot be merged (no GGUF).
PROMPT_METHODS = ("prefix", "ptuning")


@dataclass(frozen=True)
class TrainConfig:
    method: Literal["sft", "dpo", "orpo", "kto", "grpo", "galore", "prefix", "ptuning"] = _f(
        "sft", "Training method. sft: learn the responses of instruction or chat rows. dpo: prefer the chosen over "
        "the rejected response of preference pairs, measured against the model before training (the adapter "
        "switched off: no second copy in memory). orpo: the same pairs, SFT on the chosen side plus an odds-ratio "
        "penalty on the rejected side, no reference pass. kto: unpaired responses labelled good or bad. grpo: "
        "sample several completions of each prompt, score them with rewards (the grpo section) and learn from the "
        "better ones; prompt rows with an optional answer, or instruction, chat and pair rows (their response is "
        "the answer). galore: sft of every weight (lora.enabled=false) with GaLore's low-rank optimizer states: "
        "full fine-tuning in about the memory of LoRA's optimizer. prefix: sft of learned key/value vectors put "
        "before every layer's attention (P-Tuning v2; the model's weights stay as they are). ptuning: sft of "
        "learned input embeddings made by a small prompt encoder (P-Tuning). Neither can be merged into the "
        "weights, so their export is the adapter only (no GGUF)."
    )
    batch_size: int = _f(2, "Rows per device per step (grpo: completions, grpo.num_generations of each prompt).",
                         min=1)
    grad_accum: int = _f(4, "Gradient accumulation steps (effective batch = batch_size * grad_accum). On several "
                         "devices each accumulates grad_accum / devices batches when that divides evenly, so a step "
                         "sees the same rows as on one.", min=1)
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
    offload_layer_inputs: Literal["auto", True, False] = _f(
        "auto", "With gradient checkpointing on CUDA: keep each decoder layer's input (what checkpointing keeps "
        "for backward) in CPU memory, copied while the GPU computes: layers x batch x length x hidden values less "
        "GPU memory (1 GiB on an 8B model at 2 x 2048 tokens) at about the same speed. auto: on with CUDA, except "
        "with train.offload_activations (which keeps them in CPU memory itself), fsdp and deepspeed; true/on, false/off."
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
    compile_layers: Literal["auto", True, False] = _f(
        "auto", "Compile each decoder layer (torch.compile): fewer kernel launches a step (~15% faster on an H100); "
        "the first step takes longer. auto: on with CUDA on Linux with a C compiler (Triton needs one), except with "
        "8-bit weights, grpo, prefix, fsdp, deepspeed, train.kernels=liger or rows longer than "
        "train.feed_forward_slice; a layer that fails to compile runs as it is. true/on, false/off."
    )
    devices: str = _f(
        "auto", "Where to train. auto: every GPU CUDA sees, one process each (the CPU when there is none). GPU "
        "indices such as 0,1 train on those GPUs; cpu on the CPU; cpu:2 in two processes on the CPU (the "
        "several-GPU path without GPUs: for trying a setup, not faster). The same recipe runs on one device or many."
    )
    gpu_memory_cap: float = _f(
        0.0, "Use at most this many GiB of each GPU (0: all of it): room for a desktop or another program, or a try "
        "of how a run fits a smaller card. The fit estimate and train.parallel=auto count with it.", min=0
    )
    parallel: Literal["auto", "ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"] = _f(
        "auto", "How several devices share the work. ddp: each holds the whole model and trains on its share of "
        "every step's rows (fastest, when the model and a batch fit on each card). fsdp: weights, gradients and "
        "optimizer states sharded across the cards (FSDP2), for a model too big for one (16-bit or 4-bit). "
        "deepspeed-zero2 / zero3: DeepSpeed ZeRO (16-bit weights; zero3 shards the weights too). auto: ddp when the "
        "fit estimate says one card holds it, else fsdp.")
    logging_steps: int = _f(1, "Log loss, LR and memory every this many steps.", min=1)
    eval_steps: int = _f(20, "Evaluate every this many steps (with data.eval_fraction > 0 or data.eval_path).", min=1)
    save_steps: int = _f(20, "Save a checkpoint every this many steps.", min=1)
    save_total_limit: int = _f(2, "Keep at most this many checkpoints (oldest are removed; 0 keeps all).", min=0)
    early_stopping: int = _f(
        0, "Stop when the eval loss has not improved for this many evaluations, and keep the best weights "
        "(needs eval data; 0: off).", min=0)


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
class GaloreConfig:
    rank: int = _f(128, "galore: rank of the projected gradients (higher: closer to full AdamW, more memory).", min=1)
    update_interval: int = _f(
        200, "galore: steps between recomputing the projection (an SVD per weight matrix).", min=1)
    scale: float = _f(0.25, "galore: scale of the projected update (like LoRA's alpha / r).", above=0)
    target_modules: tuple[str, ...] = _f(
        ("attn", "mlp"), "galore: linear layers whose module names contain one of these get low-rank states; "
        "the rest (embeddings, norms, output head) train with plain AdamW.")
    optimizer: Literal["adamw", "adamw_8bit", "adafactor"] = _f(
        "adamw", "galore: the optimizer run in the low-rank space; adamw_8bit also stores its states in 8 bits "
        "(CUDA).")
    layerwise: bool = _f(
        False, "galore: update each layer during the backward pass, so no layer's gradient is kept after it: "
        "the least memory, but no gradient accumulation (train.grad_accum=1) and no gradient clipping.")


@dataclass(frozen=True)
class PromptTuningConfig:
    virtual_tokens: int = _f(
        20, "prefix and ptuning: learned vectors put before every input (more: more capacity, longer context).",
        min=1)
    projection: bool = _f(
        True, "prefix: learn the prefix through a two-layer network (reparameterization, as in P-Tuning v2: "
        "steadier training); the adapter is saved without it.")
    encoder: Literal["mlp", "lstm"] = _f("mlp", "ptuning: the network that makes the virtual tokens' embeddings.")
    encoder_hidden_size: int = _f(
        512, "prefix with projection, and ptuning: width of that network's hidden layer.", min=1)


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
    checkpoint: str = _f(
        "",
        "Export a checkpoint of the run (checkpoint-N, from its checkpoints/ folder) instead of its final weights: "
        "the one `launch.py eval` ranks best. Its files are named after it, e.g. <name>-checkpoint-40-q8_0.gguf "
        "(empty: the final weights).",
    )
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
    galore: GaloreConfig = field(default_factory=GaloreConfig, metadata={"help": "Settings of train.method=galore."})
    prompt_tuning: PromptTuningConfig = field(default_factory=PromptTuningConfig,
                                              metadata={"help": "Settings of train.method=prefix and ptuning."})
    grpo: GrpoConfig = field(default_factory=GrpoConfig, metadata={"help": "Settings of grpo: sampling and rewards."})
    generation: GenerationConfig = field(default_factory=GenerationConfig, metadata={"help": "Chat settings."})
    export: ExportConfig = field(default_factory=ExportConfig, metadata={"help": "Export settings."})
