"""What one chat has loaded, and how each loaded model answers.

How a model answers is decided once, when it loads: each one becomes a
`Replier` (HF weights through transformers, or a GGUF file through llama.cpp),
and the session maps a mode to its replier:

    "tuned"   the run's weights, adapter on
    "base"    the same weights with the adapter off (for a full fine-tune: the original base, loaded on first use)
    "gguf"    a GGUF file, its prompt built with the run's tokenizer and template (a loose file: its own template)
    "model"   a model opened on its own (ChatSession.open_model), e.g. a chat model to compare with

    session = ChatSession.open(run_dir, gguf=None)
    for piece in session.stream([{"role": "user", "content": "Hi"}], "tuned"):
        ...
    session.close()
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

from studio.chat.stream import open_gguf, stream_gguf_reply, stream_reply
from studio.config import GenerationConfig, ModelConfig, RunConfig
from studio.data.templates import Template
from studio.errors import StudioError


class Replier(Protocol):
    """A loaded model that answers a conversation as text pieces."""

    def reply(self, messages: list[dict], generation: GenerationConfig,
              stop: threading.Event | None = None) -> Iterator[str]: ...

    def close(self) -> None: ...


@dataclass
class HfReplier:
    """HF weights through transformers; `use_adapter=False` answers as the base from the same weights."""

    model: Any
    tokenizer: Any
    template: Template
    use_adapter: bool = True

    def reply(self, messages: list[dict], generation: GenerationConfig,
              stop: threading.Event | None = None) -> Iterator[str]:
        return stream_reply(self.model, self.tokenizer, self.template, messages, generation,
                            use_adapter=self.use_adapter, stop=stop)

    def close(self) -> None:
        self.model = None


@dataclass
class OriginalBase:
    """The model a full fine-tune started from (its weights have no adapter to switch off), loaded on first use."""

    model_config: ModelConfig
    template: Template
    loaded: HfReplier | None = None

    def reply(self, messages: list[dict], generation: GenerationConfig,
              stop: threading.Event | None = None) -> Iterator[str]:
        from studio.models import load_model

        if self.loaded is None:
            model, tokenizer = load_model(self.model_config)
            self.loaded = HfReplier(model.eval(), tokenizer, self.template)
        return self.loaded.reply(messages, generation, stop)

    def close(self) -> None:
        self.loaded = None


@dataclass
class GgufReplier:
    """A GGUF file through llama.cpp: with a run's tokenizer and template, the prompt is built exactly as in
    training; without them (a loose file), the chat template embedded in the file applies."""

    llm: Any
    tokenizer: Any = None
    template: Template | None = None

    def reply(self, messages: list[dict], generation: GenerationConfig,
              stop: threading.Event | None = None) -> Iterator[str]:
        return stream_gguf_reply(self.llm, messages, generation, self.tokenizer, self.template, stop)

    def close(self) -> None:
        if self.llm is not None:
            self.llm.close()
        self.llm = None


@dataclass
class ChatSession:
    generation: GenerationConfig  # the run's (or the defaults): each reply may change some fields
    repliers: dict[str, Replier] = field(default_factory=dict)  # mode -> how that model answers
    run_dir: Path | None = None

    @classmethod
    def open(cls, run_dir: str | Path | None, gguf: str | Path | None = None, cfg: RunConfig | None = None,
             load_hf: bool = True) -> "ChatSession":
        """A run's model (tuned and base; unless load_hf is False) and/or a GGUF file; a run brings its template.

        `cfg` is the run's config with any changes (default: as the run stored it).
        """
        from transformers import AutoTokenizer

        from studio.models import load_trained
        from studio.runs import load_run_config, read_template, weights_dir

        if not run_dir and not gguf:
            raise StudioError("Name a run to chat with, or a GGUF file with --gguf.")
        run_dir = Path(run_dir) if run_dir else None
        cfg = cfg or (load_run_config(run_dir) if run_dir else RunConfig())
        session = cls(generation=cfg.generation, run_dir=run_dir)
        tokenizer = template = None
        if run_dir:
            template = read_template(run_dir)
            if load_hf:
                model, tokenizer = load_trained(run_dir, cfg.model)
                model.eval()
                session.repliers["tuned"] = HfReplier(model, tokenizer, template)
                session.repliers["base"] = (HfReplier(model, tokenizer, template, use_adapter=False)
                                            if hasattr(model, "disable_adapter") else OriginalBase(cfg.model, template))
            else:  # only the tokenizer, to build prompts for the GGUF exactly as in training
                tokenizer = AutoTokenizer.from_pretrained(weights_dir(run_dir),
                                                          trust_remote_code=cfg.model.trust_remote_code)
        if gguf:
            session.repliers["gguf"] = GgufReplier(open_gguf(Path(gguf)), tokenizer, template)
        return session

    @classmethod
    def open_model(cls, name_or_path: str, generation: GenerationConfig) -> "ChatSession":
        """Any model on its own (a chat/instruct model to compare with): HF folder or GGUF file, mode "model"."""
        from studio.data.templates import resolve_template
        from studio.models import load_model

        if name_or_path.endswith(".gguf"):
            replier: Replier = GgufReplier(open_gguf(Path(name_or_path)))  # its embedded chat template applies
        else:
            model, tokenizer = load_model(ModelConfig(name_or_path=name_or_path))
            replier = HfReplier(model.eval(), tokenizer, resolve_template("auto", tokenizer))
        return cls(generation=generation, repliers={"model": replier})

    @property
    def default_mode(self) -> str:
        """The fine-tuned model when one is loaded, else the one model there is."""
        return "tuned" if "tuned" in self.repliers else next(iter(self.repliers))

    def describe(self) -> str:
        return str(self.run_dir or "") + (" (GGUF)" if "gguf" in self.repliers else "")

    def stream(self, messages: list[dict], mode: str, stop: threading.Event | None = None,
               generation: GenerationConfig | None = None) -> Iterator[str]:
        """A reply as text pieces from the model of `mode`; `generation` replaces the session's settings for it."""
        if mode not in self.repliers:
            raise StudioError(f"No {mode} model is loaded in this chat (loaded: {', '.join(self.repliers) or 'none'}).")
        return self.repliers[mode].reply(messages, generation or self.generation, stop)

    def close(self) -> None:
        from studio.hardware import free_accelerator_memory

        for replier in self.repliers.values():
            replier.close()
        self.repliers = {}
        free_accelerator_memory()
