"""What the Chat tab's panes have loaded, and a reply of one pane.

Panes: "base" and "tuned" (a run's weights, adapter off and on), "gguf" (an
exported GGUF file, prompted with its run's template) and "other" (any chat
model, to compare with). Each model loads on the first reply that needs it and
stays until `close()` (training and export need the memory). The caller holds
the GPU while a reply loads and generates (studio.services).

    panes = ChatPanes(runs_dir=Path("runs"))
    for piece in panes.stream("tuned", "runs/..._quickstart", None, None, messages, ReplySettings(max_new_tokens=64)):
        ...
    panes.close()
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from studio.chat.session import ChatSession
from studio.config import GenerationConfig, RunConfig
from studio.errors import StudioError
from studio.recipes import with_changes


@dataclass(frozen=True)
class ReplySettings:
    """What a reply changes of the chat model's own generation settings (None: keep the model's)."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    system_prompt: str | None = None

    def applied_to(self, generation: GenerationConfig) -> GenerationConfig:
        """`generation` with these changes, each checked like a recipe value."""
        return with_changes(generation, **{k: v for k, v in asdict(self).items() if v is not None})


@dataclass
class ChatPanes:
    runs_dir: Path = Path("runs")  # where a run given by name is looked up
    sessions: dict = field(default_factory=dict)  # (run folder, GGUF file or None) -> ChatSession
    other: ChatSession | None = None  # the chat/instruct model of the comparison pane
    other_name: str = ""

    def stream(self, pane: str, run: str | None, gguf: str | None, other: str | None, messages: list[dict],
               settings: ReplySettings = ReplySettings(), stop: threading.Event | None = None) -> Iterator[str]:
        """The reply of one pane, as text pieces; its model loads first when it is not loaded yet."""
        session = self.session(pane, run, gguf, other)
        generation = settings.applied_to(session.generation)
        return session.stream(messages, session.default_mode if pane == "other" else pane, stop, generation)

    def session(self, pane: str, run: str | None, gguf: str | None, other: str | None) -> ChatSession:
        """The loaded models a pane answers from, loading them on first use."""
        if pane == "other":
            if not other:
                raise StudioError("Type the folder or .gguf file of a chat model for this pane.")
            if self.other is None or self.other_name != other:
                self._close_other()
                self.other, self.other_name = ChatSession.open_model(other, RunConfig().generation), other
            return self.other
        if pane == "gguf" and not gguf:
            raise StudioError("Choose an exported GGUF file for this pane (Export tab, or the GGUF list).")
        if pane != "gguf" and not run:
            raise StudioError("Choose a trained run for this pane.")
        return self.run_session(run, gguf if pane == "gguf" else None)

    def run_session(self, run: str | None, gguf: str | None) -> ChatSession:
        """A run's model (gguf None) or a GGUF file with its run's template, loaded once and reused."""
        from studio.runs import find_run

        key = (run, gguf)
        if key not in self.sessions:
            run_dir = find_run(run, self.runs_dir) if run else None
            self.sessions[key] = ChatSession.open(run_dir, gguf, load_hf=gguf is None)
        return self.sessions[key]

    def close(self) -> None:
        """Free every chat model."""
        for session in self.sessions.values():
            session.close()
        self.sessions.clear()
        self._close_other()

    def _close_other(self) -> None:
        if self.other is not None:
            self.other.close()
        self.other, self.other_name = None, ""
