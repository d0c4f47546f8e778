"""Rows/s of `launch.py eval` on HF models: batched generation against one row at a time, repeated.

Loads a run's fine-tuned model once, then answers the same rows (the run's eval
split) in turn with each batch size, alternating which goes first, REPEATS
times, and prints min / median / max rows/s per batch size and the ratio of
each pair. rows/s counts generation alone, as the scorecard does (not the
model load, not the reference-loss pass). Both batch sizes must produce the
same tokens (greedy): the script counts the rows whose answers match (on a
CPU in float32 all of them; in bfloat16 on a GPU a near tie of two tokens can
tip either way between batch shapes). The load average is recorded around
every measurement, since a shared machine slows one of a pair.

Run as:  python results/eval_rows_per_s.py runs/<time>_quickstart [--repeats 5] [--batch 8 [32 ...]] [--limit N]
                                                [--max-new-tokens N] [--threads N] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def cpu_name() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, nargs="+", default=[8])
    parser.add_argument("--max-new-tokens", type=int, default=0, help="Longest answer (0: the run's).")
    parser.add_argument("--limit", type=int, default=0, help="At most this many eval rows (0: all).")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default, what the studio uses). 1 keeps a process that shares "
                             "its cores with other jobs from waiting on its own second thread.")
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    from studio.safety import stay_offline

    stay_offline()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from studio.evaluate.evaluation import run_tokenizer
    from studio.evaluate.generate import generate_hf
    from studio.evaluate.rows import select_rows
    from studio.models import load_trained
    from studio.runs import find_run, load_run_config, read_template

    run_dir = find_run(args.run)
    cfg = load_run_config(run_dir)
    tokenizer, template = run_tokenizer(run_dir, cfg), read_template(run_dir)
    rows = select_rows(run_dir, cfg, tokenizer, template, "eval", args.limit).rows
    model, _ = load_trained(run_dir, cfg.model)
    model.eval()
    generation = cfg.generation
    if args.max_new_tokens:
        generation = dataclasses.replace(generation, max_new_tokens=args.max_new_tokens)

    def answer(batch_size: int) -> tuple[float, list, tuple]:
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        outputs = [o for batch in generate_hf(model, tokenizer, template, rows, generation, batch_size) for o in batch]
        seconds = time.perf_counter() - started
        return len(rows) / seconds, [o.token_ids for o in outputs], (load_before, os.getloadavg()[0])

    sizes = (*args.batch, 1)
    for size in args.batch:
        answer(size)  # warm-up: first-call allocations and caches
    runs: dict[int, list[dict]] = {size: [] for size in sizes}
    tokens: dict[int, list] = {}
    for repeat in range(args.repeats):
        for size in (sizes if repeat % 2 == 0 else sizes[::-1]):
            rate, ids, load = answer(size)
            tokens.setdefault(size, ids)
            assert ids == tokens[size], "greedy answers changed between repeats"
            runs[size].append({"rows_per_s": rate, "load_before": load[0], "load_after": load[1]})
            print(f"repeat {repeat + 1}: batch {size}: {rate:.3f} rows/s (load average {load[0]:.2f} -> {load[1]:.2f})",
                  flush=True)

    def spread(values: list[float]) -> dict:
        return {"min": min(values), "median": statistics.median(values), "max": max(values)}

    loads = [r[k] for size in sizes for r in runs[size] for k in ("load_before", "load_after")]
    report = {
        "run": str(run_dir), "model": cfg.model.name_or_path, "rows": len(rows),
        "max_new_tokens": generation.max_new_tokens,
        "answer_tokens": sum(len(ids) for ids in tokens[1]), "repeats": args.repeats,
        "cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "dtype": str(next(model.parameters()).dtype), "torch": torch.__version__,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "batched": [{"batch_size": size, **spread([r["rows_per_s"] for r in runs[size]]),
                     "ratio": spread([b["rows_per_s"] / o["rows_per_s"] for b, o in zip(runs[size], runs[1])]),
                     "rows_matching_one_by_one": sum(a == b for a, b in zip(tokens[size], tokens[1]))}
                    for size in args.batch],
        "one_by_one": spread([r["rows_per_s"] for r in runs[1]]),
        "load_average": spread(loads), "runs": {str(k): v for k, v in runs.items()},
        "command": "python " + " ".join([f"results/{Path(__file__).name}", *sys.argv[1:]]),
    }
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
