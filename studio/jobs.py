"""One GPU job at a time: a background thread, its stop event and a pollable snapshot.

Training and export run here; the UI polls `snapshot()` (a reload simply polls
again, so it re-attaches to the running job). A second `start` while a job runs
raises BusyError instead of starting a second copy of the weights.

    jobs = JobRunner()
    jobs.start("train", run_dir.name, lambda sink, stop: run_training(run_dir, sink, stop))
    jobs.snapshot().state   # "running", then "completed" / "stopped" / "failed"
    jobs.stop()
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from studio.errors import BusyError, StudioError
from studio.events import Event, MemorySink, Sink

Work = Callable[[Sink, threading.Event], Any]


@dataclass(frozen=True)
class JobSnapshot:
    """What a poller needs: which job, its state, its events so far, how it ended."""

    kind: str = ""
    name: str = ""
    state: str = "idle"  # idle, running, completed, stopped, failed
    events: list[Event] = field(default_factory=list)
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    result: Any = None

    @property
    def running(self) -> bool:
        return self.state == "running"


class JobRunner:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._sink = MemorySink()
        self._snapshot = JobSnapshot()

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, kind: str, name: str, work: Work) -> None:
        """Run `work(sink, stop)` in the background; BusyError if a job is already running."""
        with self._lock:
            if self.busy:
                raise BusyError(f"A {self._snapshot.kind} job ({self._snapshot.name}) is running. "
                                "Wait for it to finish or stop it first: one GPU job at a time.")
            self._stop = threading.Event()
            self._sink = MemorySink()
            self._snapshot = JobSnapshot(kind, name, "running", started_at=time.time())
            self._thread = threading.Thread(target=self._run, args=(work,), name=f"job-{kind}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Ask the running job to stop at its next safe point (training: after the current step)."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> JobSnapshot:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.snapshot()

    def snapshot(self) -> JobSnapshot:
        s = self._snapshot
        return JobSnapshot(s.kind, s.name, s.state, self._sink.events(), s.started_at, s.finished_at, s.error, s.result)

    def _run(self, work: Work) -> None:
        state, error, result = "completed", None, None
        try:
            result = work(self._sink, self._stop)
            state = getattr(result, "state", None) or ("stopped" if self._stop.is_set() else "completed")
        except StudioError as exc:
            state, error = "failed", str(exc)
        except Exception as exc:  # a job must never die silently: the UI shows what happened
            state, error = "failed", f"{type(exc).__name__}: {exc}"
        s = self._snapshot
        self._snapshot = JobSnapshot(s.kind, s.name, state, [], s.started_at, time.time(), error, result)
