"""The headless twin of the studio: train, resume, export, runs, keys, bench (chat, data, eval, share: their own modules).

    python launch.py train recipes/quickstart.yaml lora.r=32 train.max_steps=60
    python launch.py resume runs/20261122-101500_quickstart
    python launch.py export runs/20261122-101500_quickstart --gguf q4_k_m
    python launch.py chat runs/20261122-101500_quickstart --compare --prompt "What is the capital of Peru?"
    python launch.py runs
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from studio.errors import StudioError



def build_parser() -> argparse.ArgumentParser:
    from studio.cli_eval import add_eval_parsers
    from studio.cli_share import add_share_parser
    from studio.fields import field_info

    gguf_choices, format_choices = field_info("export.gguf").choices, field_info("export.formats").choices
    parser = argparse.ArgumentParser(prog="launch.py", description="Local LLM fine-tuning studio (headless commands).")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="Train from a YAML recipe.", description="Train from a YAML recipe. "
                           "Ctrl-C stops cleanly: a checkpoint is saved and `resume` continues from it.")
    train.add_argument("recipe", help="Path of a recipe, e.g. recipes/quickstart.yaml.")
    train.add_argument("overrides", nargs="*", help="Dotted overrides, e.g. lora.r=32 train.max_steps=60.")
    runs_dir_option(train, "Folder the new run folder is made in")
    train.add_argument("--nodes", type=int, default=1, metavar="N",
                       help="Train on N machines: make the run folder (in a --runs-dir every machine shares) and "
                            "print the command each machine runs, instead of training here.")
    train.add_argument("--rendezvous", default="", metavar="HOST:PORT",
                       help="With --nodes: where the machines meet, the first machine's address and a free port.")

    resume = sub.add_parser(
        "resume", help="Continue a stopped, interrupted or failed run from its newest good checkpoint.",
        description="Continue a stopped, interrupted or failed run from its newest good checkpoint (a damaged "
                    "checkpoint is named and set aside). A completed run continues only with a higher total: "
                    "train.max_steps=N (or train.epochs=X).")
    resume.add_argument("run", help="Run folder or run name.")
    resume.add_argument("overrides", nargs="*", help="train.max_steps=N or train.epochs=X, to train a finished run further.")
    runs_dir_option(resume)

    export = sub.add_parser("export", help="Export a run: adapter, merged weights, verified GGUF files.")
    export.add_argument("run", help="Run folder or run name.")
    export.add_argument("--gguf", nargs="*", default=None, choices=gguf_choices, metavar="TYPE",
                        help=f"GGUF types to write and verify: {', '.join(gguf_choices)} (default: the run's export.gguf).")
    export.add_argument("--formats", nargs="*", default=None, choices=format_choices, metavar="FORMAT",
                        help=f"Other exports: {', '.join(format_choices)} (default: the run's export.formats).")
    export.add_argument("--checkpoint", default=None, metavar="checkpoint-N",
                        help=field_info("export.checkpoint").help + " Default: the run's export.checkpoint.")
    runs_dir_option(export)

    chat = sub.add_parser("chat", help="Chat with a run's model (streaming), or with a GGUF file.")
    chat.add_argument("run", nargs="?", help="Run folder or run name (omit with --gguf FILE alone).")
    chat.add_argument("--prompt", help="Answer this one prompt and exit (otherwise: interactive).")
    chat.add_argument("--base", action="store_true", help="Answer as the base model (adapter switched off).")
    chat.add_argument("--compare", action="store_true", help="Answer as base, fine-tuned (and GGUF) model, one after the other.")
    chat.add_argument("--gguf", help="Chat with this GGUF file through llama.cpp (with a run: its template).")
    chat.add_argument("overrides", nargs="*", default=[], help="Generation overrides, e.g. generation.max_new_tokens=64.")
    runs_dir_option(chat)

    data = sub.add_parser("data", help="Show what a recipe's data trains on: format, statistics, a row token by token.")
    data.add_argument("recipe", help="Path of a recipe, e.g. recipes/quickstart.yaml.")
    data.add_argument("overrides", nargs="*", help="Dotted overrides, e.g. data.path=my.jsonl data.template=chatml.")
    data.add_argument("--row", type=int, default=0, help="Row to show token by token (default 0).")

    keys = sub.add_parser("keys", help="List every config key with its type, default and help.",
                          description="Every key a recipe, an override (section.key=value) or the UI can set.")
    keys.add_argument("section", nargs="?", default=None, help="Only this section: model, data, lora, train, "
                      "generation or export.")

    add_eval_parsers(sub)
    add_share_parser(sub)

    runs = sub.add_parser("runs", help="List runs and their state.")
    runs_dir_option(runs, "Folder of the run folders to list")

    bench = sub.add_parser(
        "bench", help="Measure training speed and memory: the studio's path against the textbook one.",
        description="Train a few steps of a real model shape (random weights, no download) or a model folder on "
                    "the studio's path and on the textbook transformers + PEFT + bitsandbytes path, with the same "
                    "rows; print tokens/s, TFLOP/s, MFU, peak memory and the ratio. --max-memory instead finds the "
                    "longest sequence that trains at batch 1 under that cap.")
    bench.add_argument("model", help="A shape (llama-3.2-1b, llama-3.2-3b, llama-3.1-8b, qwen2.5-1.5b, qwen2.5-7b, "
                                     "qwen3-8b, gemma-3-270m, gemma-3-1b) or a model folder.")
    bench.add_argument("--method", choices=("qlora", "lora", "full"), default="qlora",
                       help="qlora: 4-bit base + LoRA; lora: 16-bit base + LoRA; full: every weight, 16-bit "
                            "(default qlora).")
    bench.add_argument("--train-method", default="sft", choices=field_info("train.method").choices,
                       help="train.method of the studio path (default sft); a preference method reads --batch pairs "
                            "per step, each side --length tokens. The textbook path is LoRA SFT only.")
    bench.add_argument("--batch", type=int, default=2)
    bench.add_argument("--length", type=int, default=2048, help="Tokens per row (default 2048).")
    bench.add_argument("--steps", type=int, default=10, help="Measured steps (default 10).")
    bench.add_argument("--warmup", type=int, default=3, help="Unmeasured steps first (default 3).")
    bench.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16).")
    bench.add_argument("overrides", nargs="*", help="Dotted overrides for the studio path, e.g. "
                       "train.offload_activations=true train.kernels=none.")
    bench.add_argument("--no-reference", action="store_true", help="Skip the textbook path.")
    bench.add_argument("--profile", action="store_true",
                       help="Then profile 3 more steps: where the studio path's GPU time goes, per kind of kernel (CUDA).")
    bench.add_argument("--max-memory", default=None, metavar="GIB",
                       help="Find the longest trainable sequence at batch 1 under this much GPU memory, e.g. 24GiB.")
    bench.add_argument("--out", default=None, help="Results file (.json, a .md table beside it; default bench/<...>.json).")
    return parser


def runs_dir_option(command: argparse.ArgumentParser, what: str = "Folder where a run given by name is looked up") -> None:
    command.add_argument("--runs-dir", default="runs", metavar="FOLDER", help=f"{what} (default runs).")


def main(argv: list[str] | None = None) -> int:
    from studio.cli_args import parse_args

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(build_parser(), argv)
    args.argv = argv
    if args.command not in ("runs", "keys", "share"):
        _quiet_libraries()
    try:
        from studio.cli_chat import cmd_chat
        from studio.cli_data import cmd_data
        from studio.cli_eval import cmd_compare, cmd_eval
        from studio.cli_share import cmd_share

        commands = {"train": cmd_train, "resume": cmd_resume, "export": cmd_export, "chat": cmd_chat, "data": cmd_data,
                    "runs": cmd_runs, "bench": cmd_bench, "keys": cmd_keys, "eval": cmd_eval, "compare": cmd_compare,
                    "share": cmd_share}
        return commands[args.command](args)
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _quiet_libraries() -> None:
    """Our events report progress; the libraries' own bars and info logs would drown them."""
    import warnings

    import datasets
    from transformers.utils import logging

    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecations inside the libraries
    datasets.disable_progress_bars()
    logging.set_verbosity_error()
    logging.disable_progress_bar()


@contextlib.contextmanager
def stop_on_ctrl_c(stop: threading.Event, what: str):
    """Ctrl-C (or `kill`) sets `stop`, so the job ends at its next safe point; a second Ctrl-C aborts at once."""
    def request_stop(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        print(f"\n{what}. Ctrl-C again to abort at once.", flush=True)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _train(run_dir: Path, resume: bool, changes: list[str] = ()) -> int:
    from studio.events import ConsoleSink, JsonlSink, fan_out
    from studio.runs import read_status, train_again_command
    from studio.train.health import lower_learning_rate
    from studio.train.training import run_training

    stop = threading.Event()
    try:
        with stop_on_ctrl_c(stop, "Stopping after this step (a checkpoint is saved)"):
            print(f"Run folder: {run_dir}")
            sink = fan_out(JsonlSink(run_dir / "events.jsonl"), ConsoleSink())
            result = run_training(run_dir, sink, stop, resume, changes)
    except KeyboardInterrupt:
        print(f"\n{read_status(run_dir).get('error') or 'Aborted.'}\n  python launch.py resume {run_dir}", file=sys.stderr)
        return 130
    summary = result.health if result.state == "diverged" else f"{result.state} at step {result.step}. {result.health}"
    print(f"\n{summary}\nNext:")
    if result.state == "stopped":
        print(f"  python launch.py resume {run_dir}")
    if result.state == "diverged":
        lr = load_learning_rate(run_dir)
        print(f"  {train_again_command(run_dir, f'train.learning_rate={lower_learning_rate(lr):g}')}")
        if not (run_dir / "adapter").is_dir() and not (run_dir / "model").is_dir():
            return 1
    print(f"  python launch.py chat {run_dir} --compare --prompt \"...\"")
    print(f"  python launch.py export {run_dir}")
    return 1 if result.state == "diverged" else 0


def load_learning_rate(run_dir: Path) -> float:
    from studio.runs import load_run_config

    return load_run_config(run_dir).train.learning_rate


def cmd_train(args) -> int:
    from studio.runs import create_run_dir

    from studio.train.placement import plan_placement

    cfg = load_recipe_with_notes(args.recipe, args.overrides)
    if args.nodes > 1:
        return _print_node_commands(cfg, args)
    plan_placement(cfg)  # devices this machine lacks are refused before a run folder is made
    return _train(create_run_dir(cfg, args.runs_dir), resume=False)


def _print_node_commands(cfg, args) -> int:
    """Several machines: the run folder, and the torch.distributed.run command each machine runs."""
    from studio.runs import create_run_dir
    from studio.train.parallel import check_rendezvous, node_commands
    from studio.train.placement import plan_placement

    check_rendezvous(args.rendezvous)
    placement = plan_placement(cfg)
    run_dir = create_run_dir(cfg, args.runs_dir).resolve()
    print(f"Run folder: {run_dir}\nIt must be at this path on every machine (shared storage). Each machine trains "
          f"in {placement.describe()}; start these from the studio's folder, the first machine's first:\n")
    for rank, command in enumerate(node_commands(run_dir, placement, args.nodes, args.rendezvous)):
        print(f"# machine {rank}\n{command}\n")
    print(f"Then: python launch.py chat {run_dir} · python launch.py export {run_dir}")
    return 0


def load_recipe_with_notes(path: str, overrides: list[str]):
    """The recipe, and on stderr a note for each key it holds that the studio no longer reads."""
    import warnings

    from studio.recipes import RetiredKeyWarning, load_recipe

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RetiredKeyWarning)
        cfg = load_recipe(path, overrides)
    for warning in caught:
        print(f"note: {warning.message}", file=sys.stderr)
    return cfg


def cmd_resume(args) -> int:
    from studio.runs import find_run

    return _train(find_run(args.run, args.runs_dir), resume=True, changes=args.overrides)


def cmd_export(args) -> int:
    from studio.events import ConsoleSink
    from studio.export.exporting import export_run
    from studio.runs import find_run, load_run_config

    run_dir = find_run(args.run, args.runs_dir)
    cfg = load_run_config(run_dir)
    gguf = tuple(args.gguf) if args.gguf is not None else cfg.export.gguf
    formats = tuple(args.formats) if args.formats is not None else cfg.export.formats
    checkpoint = args.checkpoint if args.checkpoint is not None else cfg.export.checkpoint
    started, stop = time.time(), threading.Event()
    try:
        with stop_on_ctrl_c(stop, "Stopping after this stage (finished files are kept)"):
            result = export_run(run_dir, gguf, formats, ConsoleSink(), cfg.export.verify_tokens, stop, checkpoint)
    except KeyboardInterrupt:
        print("\nAborted: nothing half-made was kept (unfinished files stay in exports/.work until the next export).",
              file=sys.stderr)
        return 130
    if result.reports:
        print("\nReport cards:")
    colour = {"passed": "32", "warnings": "33", "failed": "31"} if sys.stdout.isatty() else {}
    for report in result.reports:
        headline = f"{Path(report.path).name}: {report.headline}"
        if report.state in colour:
            headline = f"\033[{colour[report.state]}m{headline}\033[0m"
        kept = "" if report.passed else " (not kept; see its .report.json)"
        print(f"  {headline}{kept}")
    done = "Stopped" if result.state == "stopped" else "Exported"
    print(f"\n{done} in {time.time() - started:.0f} s to {result.out_dir}:")
    for path in result.files:
        print(f"  {path}")
    return 0 if result.passed else 1


def cmd_keys(args) -> int:
    import textwrap

    from studio.fields import config_fields, sections

    if args.section and args.section not in sections():
        raise StudioError(f"No section {args.section!r}; the sections are: {', '.join(sections())}.")
    for info in config_fields(args.section):
        default = list(info.default) if isinstance(info.default, tuple) else info.default
        print(f"{info.key}  ({info.type_text()}; default {default!r})")
        print(textwrap.fill(info.help, width=100, initial_indent="    ", subsequent_indent="    "))
    return 0


def cmd_runs(args) -> int:
    from studio.runs import list_runs, run_state
    from studio.train.checkpoints import checkpoint_step, latest_checkpoint

    for run_dir in list_runs(args.runs_dir):
        run = run_state(run_dir)
        status = run.status
        step = status.get("step")
        checkpoint = latest_checkpoint(run_dir) if run.state == "interrupted" else None
        if step is None and checkpoint is not None:  # killed mid-run: its status was never given a step
            step = checkpoint_step(checkpoint)
        line = f"{run_dir}  {run.state:11}  step {'-' if step is None else step}  loss {number_text(status.get('loss'))}"
        if run.state in ("unreadable", "running"):
            line += f"  ({run.problem})"
        elif run.state == "interrupted":
            where = f"from {checkpoint.name}" if checkpoint else "from the start: no checkpoint was saved"
            line += f"  (its process is gone; continue {where} with: python launch.py resume {run_dir})"
        print(line)
    return 0


def number_text(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def cmd_bench(args) -> int:
    from studio.bench import BenchSpec, describe, longest_sequence, run_bench, save_report

    spec = BenchSpec(model=args.model, method=args.method, batch=args.batch, length=args.length, steps=args.steps,
                     warmup=args.warmup,
                     rank=args.rank, profile=args.profile, overrides=tuple(args.overrides),
                     train_method=args.train_method)
    if args.max_memory:
        report = longest_sequence(spec, cap_gib=_gib(args.max_memory))
    else:
        report = run_bench(spec, reference=not args.no_reference)
    report["command"] = "python launch.py " + shlex.join(args.argv)
    name = Path(args.model).name
    what = f"longest-{args.max_memory}" if args.max_memory else f"b{args.batch}-l{args.length}"
    out = Path(args.out) if args.out else Path("bench") / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}-{args.method}-{args.train_method}-{what}.json"
    save_report(report, out)
    print(describe(report))
    print(f"\nSaved {out} and {out.with_suffix('.md')}")
    return 0


def _gib(text: str) -> float:
    """'24GiB', '24G' or '24' -> 24.0."""
    number = text.strip().lower().removesuffix("gib").removesuffix("gb").removesuffix("g")
    try:
        return float(number)
    except ValueError:
        raise StudioError(f"--max-memory: '{text}' is not an amount of memory; write e.g. 24GiB.") from None
