"""`launch.py eval` and `compare`: a run's scorecard on held-out rows, and several runs side by side.

    python launch.py eval runs/<time>_quickstart --rows eval
    python launch.py compare runs/<run-a> runs/<run-b>
"""

from __future__ import annotations

import threading

from studio.cli import number_text, stop_on_ctrl_c

def cmd_eval(args) -> int:
    from studio.evaluate.evaluation import MODEL_CHOICES, EvalSpec, run_evaluation
    from studio.evaluate.scorecard import format_scorecard
    from studio.runs import find_run

    run_dir = find_run(args.run, args.runs_dir)
    models = tuple(args.models) if args.models is not None else (() if args.gguf else MODEL_CHOICES)
    spec = EvalSpec(rows=args.rows, limit=args.limit, models=models, ggufs=tuple(args.gguf), other=args.other,
                    metric=args.metric, batch_size=args.batch_size, overrides=tuple(args.overrides),
                    checks=tuple(args.check))
    stop = threading.Event()
    with stop_on_ctrl_c(stop, "Stopping after this batch; what was scored is kept"):
        result = run_evaluation(run_dir, spec, lambda e: print(e.message, flush=True), stop)
    print(f"\n{result.meta['rows']}\n")
    print(format_scorecard(result.scorecard))
    print(f"\nSaved in {result.folder}" + (" (partial: stopped)" if result.partial else ""))
    return 1 if result.partial else 0


def cmd_compare(args) -> int:
    from studio.evaluate.compare import compare_runs
    from studio.runs import find_run

    comparison = compare_runs([find_run(run, args.runs_dir) for run in args.runs])
    print("config differences:")
    for key, values in comparison.differences.items() or [("(none)", [])]:
        print(f"  {key}: " + " | ".join(values))
    print("\nhow each run ended:")
    for final in comparison.finals:
        print("  " + "  ".join(f"{k} {number_text(v) if isinstance(v, float) else v}" for k, v in final.items() if v is not None))
    steps = {run: len([p for p in comparison.curves if p[0] == run]) for run in comparison.runs}
    print("\ncurve points (loss and eval loss): " + ", ".join(f"{run}: {n}" for run, n in steps.items()))
    return 0
