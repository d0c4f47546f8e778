"""Training on several devices: where a run trains, and its processes started and watched.

One recipe runs on the CPU, one GPU or several: `train.devices` says which,
`train.parallel` how they share the work. Several processes are started by
PyTorch's own launcher (torch.distributed.run) as children of the studio, one
per device, each running `studio.train.rank`; the Trainer (through accelerate)
does the distributed part: DDP, FSDP2 or DeepSpeed ZeRO.

    placement = plan_placement(cfg)      # studio.train.placement: processes, GPUs, engine
    result = train_in_ranks(run_dir, placement, sink, stop, checkpoint)

Rank 0 writes the run's files; every rank reports its events to
`<run>/ranks/rank-K.jsonl`, and rank 0's are passed on to the studio's sink.
Stop writes `<run>/ranks/stop`: the ranks agree on it after each step and all
stop at the same one, with a checkpoint. A rank that fails ends the run as
failed with that rank's error, and every process of the run is ended.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from studio.errors import ConfigError, StudioError, TrainingError
from studio.events import Event, Sink
from studio.hardware import visible_gpus
from studio.safety import hub_permission
from studio.train.placement import Placement

STOP_FILE = "stop"  # in <run>/ranks/: asks every rank to stop after its current step
POLL_S = 0.25
STOP_GRACE_S = 600  # after Stop: time for the processes to finish their step and save a checkpoint


# ---------------------------------------------------------------- the processes


def rank_command(run_dir: Path, placement: Placement, checkpoint: Path | None = None, nodes: int = 1,
                 node_rank: int = 0, rendezvous: str = "") -> list[str]:
    """The torch.distributed.run command that starts the run's processes on this machine.

    With `nodes` > 1 the same command runs on every machine (its `node_rank` told), each
    reaching the others through the `rendezvous` host:port, the run folder on storage they share.
    """
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={placement.processes}",
               "--max-restarts=0"]
    if nodes > 1:
        check_rendezvous(rendezvous)
        command += [f"--nnodes={nodes}", f"--node-rank={node_rank}", "--rdzv-backend=c10d",
                    f"--rdzv-endpoint={rendezvous}", f"--rdzv-id={Path(run_dir).name}"]
    else:
        command.append("--standalone")  # one machine: the launcher picks a free port itself
    command += ["-m", "studio.train.rank", str(run_dir)]
    if nodes > 1:
        command.append("--events")  # no studio process watches: rank 0 writes the run's events.jsonl itself
    return command + (["--checkpoint", str(checkpoint)] if checkpoint else [])


def check_rendezvous(rendezvous: str) -> None:
    if not re.fullmatch(r"[\w.\-]+:\d+", rendezvous):
        raise ConfigError(f"Several machines meet at a host:port that every one of them reaches (the first "
                          f"machine's address and a free port, e.g. 10.0.0.1:29500); got {rendezvous!r}.")


def node_commands(run_dir: Path, placement: Placement, nodes: int, rendezvous: str) -> list[str]:
    """The shell command to run on each of `nodes` machines (the first one's is first), for a run folder on
    storage they share; each machine is taken to have this one's devices."""
    import shlex

    env = rank_environment(placement, {})
    prefix = " ".join(f"{key}={shlex.quote(env[key])}" for key in ("CUDA_VISIBLE_DEVICES", "STUDIO_PARALLEL",
                                                                    "PYTHONPATH"))
    return [f"{prefix} " + shlex.join(rank_command(run_dir, placement, nodes=nodes, node_rank=k, rendezvous=rendezvous))
            for k in range(nodes)]


def rank_environment(placement: Placement, base: dict | None = None) -> dict:
    """The environment of the run's processes: their GPUs, the engine, and CPU threads shared out."""
    env = dict(os.environ if base is None else base)
    # The indices count the GPUs this process sees: through its own CUDA_VISIBLE_DEVICES, if it was given one.
    seen = visible_gpus(env)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(seen[i] if i < len(seen) else str(i) for i in placement.gpus)  # "": CPU
    env["STUDIO_PARALLEL"] = placement.engine
    # The processes import the studio from where this one did, whatever folder the studio was started in.
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))])
    env["PYTHONUNBUFFERED"] = "1"
    env.update(hub_permission())  # a hub id the user typed may still be downloaded there, as here
    if not placement.gpus:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // placement.processes)))
    return env


def ranks_folder(run_dir: Path) -> Path:
    return run_dir / "ranks"


def train_in_ranks(run_dir: Path, placement: Placement, sink: Sink, stop: threading.Event,
                   checkpoint: Path | None):
    """Run the training in the placement's processes; their events go to `sink`; the TrainResult of rank 0."""
    folder = ranks_folder(run_dir)
    folder.mkdir(exist_ok=True)
    for old in [*folder.glob("rank-*.jsonl"), folder / STOP_FILE, folder / "launcher.log"]:
        old.unlink(missing_ok=True)
    sink(Event("stage", message=f"Training in {placement.describe()}"))
    for note in placement.notes:
        sink(Event("stage", message=f"Note: {note}"))
    main_events = _EventTail(folder / "rank-0.jsonl")
    last_end: list[Event] = []

    def forward() -> None:
        for event in main_events.read():
            if event.kind == "end":
                last_end.append(event)  # told once the processes have ended and their outcome is known
            else:
                sink(event)

    with (folder / "launcher.log").open("w", encoding="utf-8") as log:
        posix = os.name == "posix"  # a process group of its own, ended with the studio (Linux, macOS)
        process = subprocess.Popen(rank_command(run_dir, placement, checkpoint), env=rank_environment(placement),
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=posix,
                                   preexec_fn=end_with_parent if posix else None)
        asked_at = None
        try:
            while process.poll() is None:
                forward()
                if stop.is_set() and asked_at is None:
                    (folder / STOP_FILE).write_text("stop\n", encoding="utf-8")
                    asked_at = time.monotonic()
                if asked_at is not None and time.monotonic() - asked_at > STOP_GRACE_S:
                    break  # a step that never ends (a hung GPU, a lost process): the processes are ended below
                time.sleep(POLL_S)
        finally:
            end_process_group(process)
            forward()
    if asked_at is not None and time.monotonic() - asked_at > STOP_GRACE_S:
        return _forced_stop(run_dir, sink)
    return _outcome(run_dir, placement, process.returncode, last_end[-1] if last_end else None, sink)


def _forced_stop(run_dir: Path, sink: Sink):
    from studio.runs import read_status, write_status

    message = (f"The processes had not stopped {STOP_GRACE_S // 60} minutes after Stop (a step that never ended: a "
               "hung GPU or a lost process), so they were ended. Resume continues from the newest checkpoint.")
    step = read_status(run_dir).get("step")
    write_status(run_dir, state="interrupted", error=message, step=step)
    sink(Event("end", message=f"Training interrupted: {message}", step=step,
               extra={"state": "interrupted", "error": message}))
    raise TrainingError(message)


def _outcome(run_dir: Path, placement: Placement, returncode: int, main_end: Event | None, sink: Sink):
    from studio.runs import read_status, write_status
    from studio.train.training import TrainResult

    if returncode == 0 and main_end is not None:
        sink(main_end)
        status = read_status(run_dir)
        return TrainResult(run_dir, status.get("state", "completed"), status.get("step") or 0, status.get("loss"),
                           status.get("health") or "")
    rank, error, kind = failed_rank(ranks_folder(run_dir), placement.processes)
    step = read_status(run_dir).get("step")
    message = f"process {rank} of {placement.processes} failed: {error}" if rank is not None else error
    write_status(run_dir, state="failed", error=message, step=step)
    sink(Event("end", message=f"Training failed: {message}", step=step, extra={"state": "failed", "error": message}))
    raise _error_class(kind)(message)


def _error_class(name: str) -> type[StudioError]:
    """The studio's error a process reported (a full disk stays a DiskSpaceError), else TrainingError."""
    import studio.errors

    found = getattr(studio.errors, name, None)
    return found if isinstance(found, type) and issubclass(found, StudioError) else TrainingError


def failed_rank(folder: Path, processes: int) -> tuple[int | None, str, str]:
    """The rank whose failure ended the run, its error and the error's type: its own report, or how it ended.

    The launcher names the first process that failed ("Root Cause"); the others often fail after it
    only because it went away (a connection reset), so their reports come second.
    """
    from studio.events import read_events

    reports = {}
    for rank in range(processes):
        path = folder / f"rank-{rank}.jsonl"
        ends = [e for e in read_events(path) if e.kind == "end"] if path.is_file() else []
        if ends and ends[-1].extra.get("error"):
            reports[rank] = (ends[-1].time, ends[-1].extra["error"], ends[-1].extra.get("error_type", ""))
    log = folder / "launcher.log"
    text = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
    root = re.search(r"Root Cause.*?\brank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", text, re.S)
    if root:
        rank, code = int(root.group(1)), int(root.group(2))
        if rank in reports:
            return rank, *reports[rank][1:]
        how = f"killed by signal {-code} ({signal.Signals(-code).name})" if code < 0 else f"exit code {code}"
        hint = " The system may have run out of memory (see dmesg)." if code == -9 else ""
        said = next((line.strip() for line in text.splitlines() if "Error" in line and not line[:1].isspace()
                     and "ChildFailedError" not in line and not line.startswith("Traceback")), "")
        if said:
            hint += f" Its log ({log}) says: {said}"
        return rank, f"it ended without a report, {how}.{hint}", ""
    if reports:
        rank = min(reports, key=lambda r: reports[r][0])
        return rank, *reports[rank][1:]
    last = [line for line in text.splitlines() if line.strip()][-5:]
    return None, "the training processes ended without a report. The launcher's last words: " + " | ".join(last), ""


def end_process_group(process: subprocess.Popen, grace_s: float = 40.0) -> None:
    """End the launcher and every rank it started; wait for them.

    The launcher ends its ranks itself on SIGTERM (giving them up to 30 s); the ranks run in
    sessions of their own, so whatever is still alive after the grace period is killed one by one.
    """
    import psutil

    try:
        family = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    if process.poll() is None:
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    _signal_group(process, signal.SIGKILL if os.name == "posix" else signal.SIGTERM)
    for rank in family:
        try:
            rank.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        if os.name == "posix":
            os.killpg(process.pid, sig)
        elif process.poll() is None:
            process.terminate()  # Windows: no process groups to signal
    except (ProcessLookupError, PermissionError):
        pass


def _libc():
    """The C library, loaded in the studio's process (loading it between fork and exec could deadlock)."""
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None  # not Linux


LIBC = _libc() if sys.platform.startswith("linux") else None


def end_with_parent() -> None:
    """Be sent SIGTERM when the parent process dies, even by kill -9 (Linux), so no process is orphaned."""
    if LIBC is not None:
        LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class _EventTail:
    """The events appended to a JSON-lines file since the last read (complete lines only)."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.partial = path, 0, ""

    def read(self) -> list[Event]:
        if not self.path.is_file():
            return []
        with self.path.open(encoding="utf-8") as fh:
            fh.seek(self.offset)
            text = fh.read()
            self.offset = fh.tell()
        lines = (self.partial + text).split("\n")
        self.partial = lines.pop()
        return [Event(**json.loads(line)) for line in lines if line.strip()]
