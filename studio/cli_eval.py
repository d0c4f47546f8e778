"""`launch.py eval` and `compare`: a run's scorecard on held-out rows, and several runs side by side.

    python launch.py eval runs/<time>_quickstart --rows eval
    python launch.py compare runs/<run-a> runs/<run-b>
"""

from __future__ import annotations

import threading

from studio.cli import number_text, runs_dir_option, stop_on_ctrl_c


def add_eval_parsers(sub) -> None:
    """The `eval` and `compare` subcommands of launch.py's parser."""
    evaluate = sub.add_parser(
        "eval", help="Score a run's models on held-out rows: base, fine-tuned, checkpoints, GGUF files.",
        description="Every chosen model answers the same rows (greedy, batched); the scorecard shows loss, "
                    "perplexity, ROUGE-L, BLEU, exact match, length ratio and stop rate per model, which checkpoint "
                    "to ship and what each GGUF kept. Saved in <run>/evals/<time>/. Ctrl-C stops and keeps what "
                    "was scored.")
    evaluate.add_argument("run", help="Run folder or run name.")
    evaluate.add_argument("--rows", default="eval", help="eval (the run's held-out split, default), train (a sample "
                          "of the training rows: a memorisation check) or a data file of the same format.")
    evaluate.add_argument("--limit", type=int, default=0, help="At most this many rows, a seeded sample (0: all).")
    evaluate.add_argument("--models", nargs="*", default=None, choices=("base", "tuned", "checkpoints", "gguf"),
                          metavar="MODEL", help="Any of base tuned checkpoints gguf (default: all of them).")
    evaluate.add_argument("--gguf", nargs="*", default=(), metavar="FILE",
                          help="GGUF files to score (default with --models gguf: the run's exports/*.gguf).")
    evaluate.add_argument("--other", default="", help="Another chat model folder to compare with (its own template).")
    evaluate.add_argument("--metric", default="loss", help="What 'best checkpoint' means: loss (default), perplexity, "
                          "rouge_l, bleu, exact_match, stop_rate or check:NAME.")
    evaluate.add_argument("--batch-size", type=int, default=8, help="Rows answered together on HF models (default 8).")
    evaluate.add_argument("--max-new-tokens", type=int, default=0, metavar="N",
                          help="The longest answer in tokens (default: the run's generation.max_new_tokens).")
    evaluate.add_argument("--check", action="append", default=[], metavar="CHECK",
                          help="A check for every answer, saved with the run and reused: regex:PATTERN, json or "
                               "contains (the reference appears in the answer). Repeat for several.")
    evaluate.add_argument("--judge", default="", metavar="MODEL",
                          help="A chat model (folder or hub id) that says which of two models answered each row "
                               "better, asked twice with the answers swapped; reported with its agreement.")
    evaluate.add_argument("--judge-pair", nargs=2, default=(), metavar=("FIRST", "SECOND"),
                          help="The two models the judge compares, as the scorecard names them (default: "
                               "fine-tuned base).")
    evaluate.add_argument("overrides", nargs="*", help="Other generation settings, e.g. generation.do_sample=true "
                          "generation.seed=3 (seeded sampling instead of greedy answers).")
    runs_dir_option(evaluate)

    compare = sub.add_parser("compare", help="Compare runs: loss curves, config differences, final scores.")
    compare.add_argument("runs", nargs="+", help="Two or more run folders or names.")
    runs_dir_option(compare)


def cmd_eval(args) -> int:
    from studio.evaluate.evaluation import MODEL_CHOICES, EvalSpec, run_evaluation
    from studio.evaluate.scorecard import format_scorecard
    from studio.runs import find_run

    run_dir = find_run(args.run, args.runs_dir)
    models = tuple(args.models) if args.models is not None else (() if args.gguf else MODEL_CHOICES)
    spec = EvalSpec(rows=args.rows, limit=args.limit, models=models, ggufs=tuple(args.gguf), other=args.other,
                    metric=args.metric, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                    overrides=tuple(args.overrides), checks=tuple(args.check), judge=args.judge,
                    judge_pair=tuple(args.judge_pair))
    stop = threading.Event()
    with stop_on_ctrl_c(stop, "Stopping after this batch; what was scored is kept"):
        result = run_evaluation(run_dir, spec, lambda e: print(e.message, flush=True), stop)
    print(f"\n{result.meta['rows']}\n")
    print(format_scorecard(result.scorecard, run_dir))
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
