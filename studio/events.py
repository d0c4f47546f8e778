"""Typed progress events and the sinks that receive them.

A long job (training, export) reports through `sink(event)`. Sinks are plain
callables, so several can be combined with `fan_out`:

    sink = fan_out(JsonlSink(run_dir / "events.jsonl"), ConsoleSink())
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

EventKind = Literal["start", "log", "eval", "checkpoint", "stage", "warning", "end", "error"]


@dataclass(frozen=True)
class Event:
    """One thing that happened in a job.

    `kind` says which: "log" carries training metrics of one logging step (the
    method's own values in extra["metrics"]; grpo puts a few of the step's
    completions with their rewards in extra["samples"]), "eval" an eval loss, "checkpoint" a saved checkpoint, "stage" a step of an
    export, "warning" something a person should look at (a loss spike,
    overfitting, a damaged checkpoint), "end" how the job ended ("completed",
    "stopped", "diverged", "failed", "interrupted").
    """

    kind: EventKind
    message: str = ""
    step: int | None = None
    max_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_per_second: float | None = None
    elapsed_s: float | None = None
    eta_s: float | None = None
    memory: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v not in (None, {}, "")})


Sink = Callable[[Event], None]


def fan_out(*sinks: Sink) -> Sink:
    def send(event: Event) -> None:
        for sink in sinks:
            sink(event)

    return send


class JsonlSink:
    """Appends each event as one JSON line (a resumed run appends to the same file)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __call__(self, event: Event) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(event.to_json() + "\n")


class MemorySink:
    """Keeps the latest events in a ring buffer, for pollers such as the UI."""

    def __init__(self, maxlen: int = 10_000) -> None:
        self._events: deque[Event] = deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self._events.append(event)

    def events(self) -> list[Event]:
        with self._lock:
            return list(self._events)


class ConsoleSink:
    """One line per event on the terminal, for headless runs."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stdout

    def __call__(self, event: Event) -> None:
        self.stream.write(format_event(event) + "\n")
        self.stream.flush()


def format_event(e: Event) -> str:
    if e.kind == "log":
        parts = [f"step {e.step}/{e.max_steps}"]
        if e.loss is not None:
            parts.append(f"loss {e.loss:.4f}")
        if e.learning_rate is not None:
            parts.append(f"lr {e.learning_rate:.2e}")
        if e.grad_norm is not None:
            parts.append(f"grad {e.grad_norm:.2f}")
        if e.tokens_per_second:
            parts.append(f"{e.tokens_per_second:,.0f} tok/s")
        if e.eta_s is not None:
            parts.append(f"ETA {_duration(e.eta_s)}")
        if e.memory:
            parts.append(_memory_text(e.memory))
        reward = e.extra.get("metrics", {}).get("reward")
        if reward is not None:
            parts.insert(2, f"reward {reward:.3f}")
        lines = ["  " + " | ".join(parts)]
        for sample in e.extra.get("samples", ())[:2]:  # grpo: a couple of the step's completions
            flat = " ".join(str(sample.get("completion", "")).split())
            lines.append(f"    reward {sample.get('reward', 0):.2f} <- {flat[:100]!r}")
        return "\n".join(lines)
    if e.kind == "eval":
        return f"  step {e.step}: eval loss {e.eval_loss:.4f}"
    return f"[{e.kind}] {e.message}"


def _memory_text(m: dict) -> str:
    devices = m.get("devices") or ()
    if devices and devices[0].get("gpu_allocated") is not None:
        return "GPUs " + " · ".join(f"{d['gpu_allocated']:.1f}" for d in devices) + " GiB alloc"
    if devices:
        return "RAM " + " · ".join(f"{d['process_rss']:.1f}" for d in devices) + " GiB"
    if m.get("gpu_allocated") is not None:
        return f"GPU {m['gpu_allocated']:.1f}/{m.get('gpu_reserved', 0):.1f} GiB alloc/res"
    return f"RAM {m['process_rss']:.1f} GiB"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def read_events(path: str | Path) -> list[Event]:
    """Load events written by JsonlSink (skips a torn last line after a crash)."""
    events = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            events.append(Event(**json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            continue
    return events
