"""What is loaded for chat: a run's model (adapter switchable) and/or a GGUF file.

    session = ChatSession.open("runs/..._quickstart", gguf=None, overrides=[])
    for piece in session.stream([{"role": "user", "content": "Hi"}], mode="tuned"):
        ...
    session.close()

Modes: "tuned" (adapter on), "base" (same weights, adapter off), "gguf".
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from studio.config import GenerationConfig, RunConfig
from studio.recipes import apply_overrides
from studio.errors import StudioError


@dataclass
class ChatSession:
    generation: GenerationConfig
    run_dir: Path | None = None
    model: object = None
    tokenizer: object = None
    template: object = None
    llm: object = None
    base_config: object = None  # the run's ModelConfig: the original base of a full fine-tune
    base: tuple | None = None  # (model, tokenizer) of that base, loaded on first use

    @property
    def full_finetune(self) -> bool:
        return self.model is not None and self.run_dir is not None and not hasattr(self.model, "disable_adapter")

    def _original_base(self) -> tuple:
        from studio.models import load_model

        if self.base is None:
            model, tokenizer = load_model(self.base_config)
            self.base = (model.eval(), tokenizer)
        return self.base

    @classmethod
    def open(cls, run: str | None, gguf: str | None = None, overrides: list[str] = (),
             load_hf: bool = True) -> "ChatSession":
        """A run's model (unless load_hf is False) and/or a GGUF file; a run brings its template."""
        from transformers import AutoTokenizer

        from studio.chat.stream import open_gguf
        from studio.models import load_trained
        from studio.runs import find_run, load_run_config, read_template, weights_dir

        if not run and not gguf:
            raise StudioError("Name a run to chat with, or a GGUF file with --gguf.")
        run_dir = find_run(run) if run else None
        cfg = apply_overrides(load_run_config(run_dir) if run_dir else RunConfig(), overrides)
        session = cls(generation=cfg.generation, run_dir=run_dir, base_config=cfg.model)
        if run_dir:
            session.template = read_template(session.run_dir)
            if load_hf:
                session.model, session.tokenizer = load_trained(session.run_dir, cfg.model)
                session.model.eval()
            else:  # only the tokenizer, to build prompts for the GGUF exactly as in training
                session.tokenizer = AutoTokenizer.from_pretrained(weights_dir(session.run_dir),
                                                                  trust_remote_code=cfg.model.trust_remote_code)
        if gguf:
            session.llm = open_gguf(Path(gguf))
        return session

    @classmethod
    def open_model(cls, name_or_path: str, generation: GenerationConfig) -> "ChatSession":
        """Any model on its own (a chat/instruct model to compare with): HF folder or GGUF file."""
        from studio.chat.stream import open_gguf
        from studio.config import ModelConfig
        from studio.models import load_model
        from studio.data.templates import resolve_template

        session = cls(generation=generation)
        if name_or_path.endswith(".gguf"):
            session.llm = open_gguf(Path(name_or_path))  # its embedded chat template applies
            return session
        session.model, session.tokenizer = load_model(ModelConfig(name_or_path=name_or_path))
        session.model.eval()
        session.template = resolve_template("auto", session.tokenizer)
        return session

    @property
    def default_mode(self) -> str:
        return "gguf" if self.model is None else "tuned"

    def describe(self) -> str:
        return str(self.run_dir or "") + (" (GGUF)" if self.llm is not None else "")

    def stream(self, messages: list[dict], mode: str, stop: threading.Event | None = None,
               generation: GenerationConfig | None = None) -> Iterator[str]:
        """A reply as text pieces; `generation` replaces the session's settings for this reply."""
        from studio.chat.stream import stream_gguf_reply, stream_reply

        generation = generation or self.generation
        if mode == "gguf" or self.model is None:
            if self.llm is None:
                raise StudioError("No GGUF file is loaded for chat.")
            # A run's GGUF gets the prompt built exactly as in training; a loose GGUF uses its own template.
            tokenizer, template = (self.tokenizer, self.template) if self.run_dir else (None, None)
            return stream_gguf_reply(self.llm, messages, generation, tokenizer, template, stop)
        if mode == "base" and self.full_finetune:
            # A fully fine-tuned model has no adapter to switch off: the base is the original model.
            return stream_reply(*self._original_base(), self.template, messages, generation, stop=stop)
        return stream_reply(self.model, self.tokenizer, self.template, messages, generation,
                            use_adapter=(mode != "base"), stop=stop)

    def close(self) -> None:
        from studio.hardware import free_accelerator_memory

        if self.llm is not None:
            self.llm.close()
        self.model = self.llm = self.base = None
        free_accelerator_memory()
