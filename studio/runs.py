"""Run folders: everything about one training run, in one place.

    runs/<YYYYmmdd-HHMMSS>_<name>/
        config.yaml      the fully resolved config
        template.jinja   the prompt template used (chat and export use it too)
        events.jsonl     progress events, appended on resume
        status.json      what the run's own process last recorded (see run_state for the truth)
        .lock            held (flock) by the process training or exporting the run
        checkpoints/     trainer checkpoints (resume starts from the newest good one)
        adapter/         the final LoRA adapter and tokenizer  (or model/ for full fine-tuning)
        exports/         merged weights, GGUF files and their reports

A run's state is what status.json says, corrected by the lock: a run that says
"running" while no process holds its lock was killed, and reads `interrupted`.

    with lock_run(run_dir, "training"):          # RunBusyError if another process holds it
        ...
    run_state(run_dir).state                      # running / completed / stopped / diverged /
                                                  # failed / interrupted / unreadable
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from studio.config import RunConfig
from studio.recipes import load_saved_config, save_config
from studio.errors import DiskSpaceError, RunBusyError, RunNotFoundError
from studio.data.templates import Template, template_from_text

# Errors of a write that the file system refused for lack of room (or a file size limit).
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def create_run_dir(cfg: RunConfig, runs_dir: str | Path) -> Path:
    """Make a new, uniquely named run folder in `runs_dir` and store the resolved config in it.

    A folder that could not be completed (a full disk) is removed again, so no
    run without a config is left behind.
    """
    safe_name = re.sub(r"[^A-Za-z0-9_.-]+", "-", cfg.name).strip("-.") or "run"
    base = Path(runs_dir) / f"{time.strftime('%Y%m%d-%H%M%S')}_{safe_name}"
    run_dir, n = base, 1
    while run_dir.exists():
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    try:
        (run_dir / "checkpoints").mkdir(parents=True)
        write_atomically(run_dir / "config.yaml", lambda tmp: save_config(cfg, tmp))
    except OSError as exc:
        shutil.rmtree(run_dir, ignore_errors=True)
        if exc.errno in DISK_FULL_ERRNOS:
            raise DiskSpaceError(f"Cannot create a run in {run_dir.parent}: {disk_full_text(run_dir.parent)}") from None
        raise
    return run_dir


def write_atomically(path: Path, write) -> None:
    """`write(tmp_path)`, then rename over `path`: readers see the old file or the whole new one."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def find_run(name_or_path: str | Path, runs_dir: str | Path = "runs") -> Path:
    """A run folder from its path or its name (the newest run whose folder name ends with it)."""
    path = Path(name_or_path)
    if (path / "config.yaml").is_file():
        return path
    candidates = sorted(Path(runs_dir).glob(f"*{path.name}*/config.yaml")) if Path(runs_dir).is_dir() else []
    if candidates:
        return candidates[-1].parent
    raise RunNotFoundError(
        f"No run found at {name_or_path!r}. Give a run folder (runs/<time>_<name>) or run name; "
        f"runs are listed with `python launch.py runs`."
    )


def train_again_command(run_dir: Path, change: str) -> str:
    """The command that starts a new run from this run's config with one change, in the same runs folder."""
    where = "" if run_dir.parent == Path("runs") else f" --runs-dir {run_dir.parent}"
    return f"python launch.py train {run_dir / 'config.yaml'} {change}{where}"


def list_runs(runs_dir: str | Path = "runs") -> list[Path]:
    root = Path(runs_dir)
    return sorted(p.parent for p in root.glob("*/config.yaml")) if root.is_dir() else []


def load_run_config(run_dir: Path) -> RunConfig:
    """The run's resolved config (one written by an older version loads too, its retired keys dropped)."""
    return load_saved_config(run_dir / "config.yaml")


def save_run_config(run_dir: Path, cfg: RunConfig) -> None:
    write_atomically(run_dir / "config.yaml", lambda tmp: save_config(cfg, tmp))


# ---------------------------------------------------------------- status and state


def write_status(run_dir: Path, **fields) -> None:
    """Update status.json atomically (a crash never leaves half a file)."""
    try:
        status = read_status(run_dir)
    except RunNotFoundError:
        status = {}  # a broken status is replaced by what is known now
    # Strict JSON has no NaN: a non-finite number is stored as null (the health text says what it was).
    status.update({k: (None if isinstance(v, float) and v != v or v in (float("inf"), float("-inf")) else v)
                   for k, v in fields.items()}, updated=time.time())
    write_atomically(run_dir / "status.json",
                     lambda tmp: tmp.write_text(json.dumps(status, indent=2), encoding="utf-8"))


def read_status(run_dir: Path) -> dict:
    """status.json as written; RunNotFoundError naming the file when it cannot be read."""
    path = run_dir / "status.json"
    if not path.is_file():
        return {}
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunNotFoundError(f"{path} is damaged ({exc}).") from None
    if not isinstance(status, dict):
        raise RunNotFoundError(f"{path} is damaged (not a JSON object).")
    return status


@dataclass(frozen=True)
class RunState:
    """What is true of a run now: its state, and the status fields behind it."""

    run_dir: Path
    state: str  # running, completed, stopped, diverged, failed, interrupted, unreadable, new
    status: dict
    problem: str = ""  # why the run is unreadable, or who holds it

    @property
    def resumable(self) -> bool:
        return self.state in ("stopped", "interrupted", "failed", "completed")


def run_state(run_dir: Path) -> RunState:
    """The run's state with the lock consulted: "running" only while a live process holds the run."""
    try:
        status = read_status(run_dir)
    except RunNotFoundError as exc:
        return RunState(run_dir, "unreadable", {}, str(exc))
    holder = lock_holder(run_dir)
    if holder is not None and holder.get("job") == "training":
        return RunState(run_dir, "running", status, describe_holder(holder))
    state = status.get("state", "new")
    if state == "running":
        state = "interrupted"  # its process is gone: killed, crashed, or the machine went down
    return RunState(run_dir, state, status, describe_holder(holder) if holder else "")


# ---------------------------------------------------------------- the run lock

LOCK_FILE = ".lock"


@contextlib.contextmanager
def lock_run(run_dir: Path, job: str) -> Iterator[None]:
    """Hold the run for `job` ("training", "export") for the duration; RunBusyError when held elsewhere.

    A real lock (flock), not a PID file: the system releases it when the process
    dies, however it dies, so a killed run never stays "locked".
    """
    path = run_dir / LOCK_FILE
    fh = open(path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(path)
            raise RunBusyError(f"{run_dir.name} is in use: {describe_holder(holder)}. "
                               "Wait for it to finish or stop it first.") from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"job": job, "pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                             "command": " ".join(sys.argv[:4])}))
        fh.flush()
        yield
    finally:
        fh.close()  # closing releases the lock


def lock_holder(run_dir: Path) -> dict | None:
    """Who holds the run's lock ({job, pid, host, since}), or None when nobody does."""
    path = run_dir / LOCK_FILE
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(path)
        return None


def _read_holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, json.JSONDecodeError):
        return {}


def describe_holder(holder: dict) -> str:
    since = time.strftime("%H:%M:%S", time.localtime(holder["since"])) if holder.get("since") else "?"
    where = f"process {holder.get('pid', '?')} on {holder.get('host', '?')}"
    return f"{holder.get('job', 'a job')} by {where} since {since}"


# ---------------------------------------------------------------- disk


def human_bytes(n: float) -> str:
    """"512 KiB", "850 MiB", "12.3 GiB": the unit that shows the figure."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:,.1f} {unit}" if n / size < 10 or unit == "GiB" else f"{n / size:,.0f} {unit}"
    return f"{n:,.0f} bytes"


def disk_full_text(folder: Path) -> str:
    free = shutil.disk_usage(_existing(folder)).free
    return f"the disk is full ({human_bytes(free)} free there). Free some space, then try again."


# Less free than this (or than 5% of a small disk) where a write just failed: the disk is what stopped
# it, whatever the error says.
NEARLY_FULL_BYTES = 32 << 20


def is_disk_full(exc: BaseException, folder: Path | None = None) -> bool:
    """Whether an error (or one it was raised from) is a write refused for lack of room.

    torch reports a failed write as a RuntimeError without an errno, and its text varies with the
    version ("file write failed", "enforce fail at inline_container.cc ... unexpected pos"): so with
    `folder` given, a read or write error there while its disk is all but full counts too.
    """
    seen, first = set(), exc
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        if isinstance(exc, RuntimeError) and "file write failed" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    if folder is None or not isinstance(first, (RuntimeError, OSError)) or "OutOfMemory" in type(first).__name__:
        return False  # (running out of GPU memory on a nearly full disk is still a matter of memory)
    disk = shutil.disk_usage(_existing(folder))
    return disk.free < min(NEARLY_FULL_BYTES, disk.total * 0.05)


def check_free_disk(folder: Path, needed: float, what: str) -> None:
    """Refuse before writing when `needed` bytes (plus a margin) do not fit in `folder`'s file system."""
    free = shutil.disk_usage(_existing(folder)).free
    if needed * 1.1 > free:
        raise DiskSpaceError(
            f"Not enough disk space in {folder} for {what}: about {human_bytes(needed)} is needed, and a tenth "
            f"more to spare; {human_bytes(free)} is free. Free {human_bytes(needed * 1.1 - free)} or more and "
            "try again."
        )


def _existing(folder: Path) -> Path:
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


# ---------------------------------------------------------------- templates and weights


def read_template(run_dir: Path) -> Template:
    """The template the run was trained with (chat and export must use the same one)."""
    path = run_dir / "template.jinja"
    if not path.is_file():
        raise RunNotFoundError(f"{run_dir} has no template.jinja: it never got as far as loading its data.")
    return template_from_text(path.read_text(encoding="utf-8"), "run")


def weights_dir(run_dir: Path) -> Path:
    """Where the trained result lives: adapter/ for LoRA runs, model/ for full fine-tuning."""
    for name in ("adapter", "model"):
        if (run_dir / name).is_dir():
            return run_dir / name
    raise RunNotFoundError(f"{run_dir} has no trained weights yet (no adapter/ or model/). Train or resume it first.")
