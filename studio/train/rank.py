"""One process of a several-device run, as studio.train.parallel starts it through torch.distributed.run.

    python -m torch.distributed.run --nproc-per-node=2 --standalone -m studio.train.rank RUN_DIR [--checkpoint DIR]
    (launch.py train RECIPE --nodes N --rendezvous HOST:PORT prints the command for each of several machines)

It trains the run like a single process does (studio.train.training), reporting
its events to `<run>/ranks/rank-K.jsonl`; rank 0 alone writes the run's files.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import traceback
from pathlib import Path

from studio.train.parallel import POLL_S, STOP_FILE, end_with_parent, ranks_folder


class AgreedStop:
    """The stop button as several processes see it: set on all of them at the same step.

    Rank 0 watches for the stop file; after each step the ranks take the maximum of
    their flags (one tiny all-reduce), so none steps on while another waits for it.
    """

    def __init__(self, local: threading.Event) -> None:
        self.local = local
        self.agreed = False

    def agree(self) -> bool:
        import torch
        import torch.distributed as dist

        group = host_group()
        if group is None:
            self.agreed = self.local.is_set()
            return self.agreed
        # A CPU tensor over gloo: the GPUs' queues are not waited for, so the next step's work is not held up.
        flag = torch.tensor([1 if self.local.is_set() else 0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        self.agreed = bool(flag.item())
        return self.agreed

    def is_set(self) -> bool:
        return self.agreed


_HOST_GROUP: list = []


def host_group():
    """A gloo group of every process, for the small talk between them (stop flags, memory readings) on the CPU:
    over NCCL each would wait for the GPU's queue to drain. None when training alone."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    if not _HOST_GROUP:
        _HOST_GROUP.append(dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD)
    return _HOST_GROUP[0]


# What torch.distributed.run tells each process it starts.
LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                      "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def train_alone_if_the_only_process() -> None:
    """A run of one process (one GPU of several, or the studio's own GPU runs) trains as a process alone
    does: with the launcher's variables set, accelerate would set it up as one process of a distributed
    run, which some optimizers refuse (layer-wise GaLore)."""
    if os.environ.get("WORLD_SIZE") == "1":
        for name in LAUNCHER_VARIABLES:
            os.environ.pop(name, None)


def _watch_stop_file(path: Path, local: threading.Event) -> None:
    while not local.is_set():
        if path.exists():
            local.set()
        local.wait(POLL_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--events", action="store_true",
                        help="Rank 0 also writes the run's events.jsonl and prints them (no studio process watches).")
    args = parser.parse_args(argv)

    from studio.safety import stay_offline

    end_with_parent()  # the launcher may die without ending this process (kill -9)
    stay_offline()
    train_alone_if_the_only_process()
    import torch

    from studio.events import JsonlSink
    from studio.hardware import local_rank, process_rank
    from studio.train.training import train_run

    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())  # before anything asks for "the" GPU
    rank = process_rank()
    folder = ranks_folder(args.run_dir)
    folder.mkdir(exist_ok=True)
    sink = JsonlSink(folder / f"rank-{rank}.jsonl")
    if args.events and rank == 0:
        from studio.events import ConsoleSink, fan_out

        sink = fan_out(sink, JsonlSink(args.run_dir / "events.jsonl"), ConsoleSink())
    local = threading.Event()
    if rank == 0:
        threading.Thread(target=_watch_stop_file, args=(folder / STOP_FILE, local), daemon=True).start()
    try:
        train_run(args.run_dir, sink, AgreedStop(local), args.checkpoint)
    except BaseException:
        traceback.print_exc()  # to the launcher's log; the error itself is in this rank's "end" event
        return 1
    finally:
        local.set()  # ends the watcher
    # Ended here, not by the interpreter's exit, where a communication library's threads could still be
    # torn down (DeepSpeed's on the CPU aborted a process that had finished its run).
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
