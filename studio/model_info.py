"""What a model is, read from its config and tokenizer without loading its weights.

    info = describe_model("builtin:gemma-3-270m")
    info.architecture, info.parameters, info.vocabulary, info.has_chat_template
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelDescription:
    architecture: str  # "LlamaForCausalLM"
    parameters: int | None  # None when the shape is unknown
    vocabulary: int
    has_chat_template: bool


def describe_model(name_or_path: str) -> ModelDescription:
    """The model's architecture, size, vocabulary and whether it brings a chat template (weights not loaded)."""
    from transformers import AutoConfig

    from studio.fit import parameter_counts, shape_of
    from studio.models import hf_folder, hub_access, load_error, load_tokenizer, refuse_unsafe_files

    source = hf_folder(name_or_path)
    refuse_unsafe_files(source, trust_remote_code=False)  # its message names the setting that allows it
    try:
        with hub_access(source):
            config = AutoConfig.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise load_error(name_or_path, exc, source) from None
    tokenizer = load_tokenizer(name_or_path)
    shape = shape_of(str(source)) or shape_of(name_or_path)
    return ModelDescription(
        architecture=config.architectures[0] if config.architectures else config.model_type,
        parameters=sum(parameter_counts(shape)) if shape else None,
        vocabulary=len(tokenizer),
        has_chat_template=bool(tokenizer.chat_template),
    )
