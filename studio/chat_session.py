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

from studio.config import GenerationConfig, RunConfig, apply_overrides
from studio.errors import StudioError


@dataclass
class ChatSession:
    generation: GenerationConfig
    run_dir: Path | None = None
    model: object = None
    tokenizer: object = None
    template: object = None
    llm: object = None

    @classmethod
    def open(cls, run: str | None, gguf: str | None = None, overrides: list[str] = (),
             load_hf: bool = True) -> "ChatSession":
        """A run's model (unless load_hf is False) and/or a GGUF file; a run brings its template."""
        from transformers import AutoTokenizer

        from studio.chat import open_gguf
        from studio.models import load_trained
        from studio.runs import find_run, load_run_config, read_template, weights_dir

        if not run and not gguf:
            raise StudioError("Name a run to chat with, or a GGUF file with --gguf.")
        run_dir = find_run(run) if run else None
        cfg = apply_overrides(load_run_config(run_dir) if run_dir else RunConfig(), overrides)
        session = cls(generation=cfg.generation, run_dir=run_dir)
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
        from studio.chat import open_gguf
        from studio.config import ModelConfig
        from studio.models import load_model
        from studio.templates import resolve_template

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

    def stream(self, messages: list[dict], mode: str, stop: threading.Event | None = None) -> Iterator[str]:
        from studio.chat import stream_gguf_reply, stream_reply

        if mode == "gguf" or self.model is None:
            if self.llm is None:
                raise StudioError("No GGUF file is loaded for chat.")
            # A run's GGUF gets the prompt built exactly as in training; a loose GGUF uses its own template.
            tokenizer, template = (self.tokenizer, self.template) if self.run_dir else (None, None)
            return stream_gguf_reply(self.llm, messages, self.generation, tokenizer, template, stop)
        return stream_reply(self.model, self.tokenizer, self.template, messages, self.generation,
                            use_adapter=(mode != "base"), stop=stop)

    def close(self) -> None:
        from studio.hardware import free_accelerator_memory

        if self.llm is not None:
            self.llm.close()
        self.model = self.llm = None
        free_accelerator_memory()
