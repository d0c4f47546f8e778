"""The headless twin of the studio: train, resume, export, chat, runs.

    python launch.py train recipes/quickstart.yaml lora.r=32 train.max_steps=60
    python launch.py resume runs/20261122-101500_quickstart
    python launch.py export runs/20261122-101500_quickstart --gguf q4_k_m
    python launch.py chat runs/20261122-101500_quickstart --compare --prompt "What is the capital of Peru?"
    python launch.py runs
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from studio.errors import StudioError

GGUF_CHOICES = ("f16", "bf16", "q8_0", "q4_k_m", "q5_k_m", "q6_k")
FORMAT_CHOICES = ("adapter", "merged_16bit", "merged_4bit")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch.py", description="Local LLM fine-tuning studio (headless commands).")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="Train from a YAML recipe.", description="Train from a YAML recipe. "
                           "Ctrl-C stops cleanly: a checkpoint is saved and `resume` continues from it.")
    train.add_argument("recipe", help="Path of a recipe, e.g. recipes/quickstart.yaml.")
    train.add_argument("overrides", nargs="*", help="Dotted overrides, e.g. lora.r=32 train.max_steps=60.")

    resume = sub.add_parser("resume", help="Continue a stopped or crashed run from its newest checkpoint.")
    resume.add_argument("run", help="Run folder or run name.")

    export = sub.add_parser("export", help="Export a run: adapter, merged weights, verified GGUF files.")
    export.add_argument("run", help="Run folder or run name.")
    export.add_argument("--gguf", nargs="*", default=None, choices=GGUF_CHOICES, metavar="TYPE",
                        help=f"GGUF types to write and verify: {', '.join(GGUF_CHOICES)} (default: the run's export.gguf).")
    export.add_argument("--formats", nargs="*", default=None, choices=FORMAT_CHOICES, metavar="FORMAT",
                        help=f"Other exports: {', '.join(FORMAT_CHOICES)} (default: the run's export.formats).")

    chat = sub.add_parser("chat", help="Chat with a run's model (streaming), or with a GGUF file.")
    chat.add_argument("run", nargs="?", help="Run folder or run name (omit with --gguf FILE alone).")
    chat.add_argument("--prompt", help="Answer this one prompt and exit (otherwise: interactive).")
    chat.add_argument("--base", action="store_true", help="Answer as the base model (adapter switched off).")
    chat.add_argument("--compare", action="store_true", help="Answer as base, fine-tuned (and GGUF) model, one after the other.")
    chat.add_argument("--gguf", help="Chat with this GGUF file through llama.cpp (with a run: its template).")
    chat.add_argument("overrides", nargs="*", default=[], help="Generation overrides, e.g. generation.max_new_tokens=64.")

    data = sub.add_parser("data", help="Show what a recipe's data trains on: format, statistics, a row token by token.")
    data.add_argument("recipe", help="Path of a recipe, e.g. recipes/quickstart.yaml.")
    data.add_argument("overrides", nargs="*", help="Dotted overrides, e.g. data.path=my.jsonl data.template=chatml.")
    data.add_argument("--row", type=int, default=0, help="Row to show token by token (default 0).")

    runs = sub.add_parser("runs", help="List runs and their state.")
    runs.add_argument("--runs-dir", default="runs")

    bench = sub.add_parser(
        "bench", help="Measure training speed and memory: the studio's path against the textbook one.",
        description="Train a few steps of a real model shape (random weights, no download) or a model folder on "
                    "the studio's path and on the textbook transformers + PEFT + bitsandbytes path, with the same "
                    "rows; print tokens/s, TFLOP/s, MFU, peak memory and the ratio. --max-memory instead finds the "
                    "longest sequence that trains at batch 1 under that cap.")
    bench.add_argument("model", help="A shape (llama-3.2-1b, llama-3.2-3b, llama-3.1-8b, qwen2.5-1.5b, qwen2.5-7b, "
                                     "qwen3-8b, gemma-3-270m, gemma-3-1b) or a model folder.")
    bench.add_argument("--method", choices=("qlora", "lora"), default="qlora",
                       help="qlora: 4-bit base + LoRA; lora: 16-bit base + LoRA (default qlora).")
    bench.add_argument("--batch", type=int, default=2)
    bench.add_argument("--length", type=int, default=2048, help="Tokens per row (default 2048).")
    bench.add_argument("--steps", type=int, default=10, help="Measured steps (default 10).")
    bench.add_argument("--warmup", type=int, default=3, help="Unmeasured steps first (default 3).")
    bench.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16).")
    bench.add_argument("overrides", nargs="*", help="Dotted overrides for the studio path, e.g. "
                       "train.offload_activations=true train.kernels=none.")
    bench.add_argument("--no-reference", action="store_true", help="Skip the textbook path.")
    bench.add_argument("--profile", action="store_true",
                       help="Also record where the studio path's GPU time goes, per kind of kernel (CUDA).")
    bench.add_argument("--max-memory", default=None, metavar="GIB",
                       help="Find the longest trainable sequence at batch 1 under this much GPU memory, e.g. 24GiB.")
    bench.add_argument("--out", default=None, help="Results file (.json, a .md table beside it; default bench/<...>.json).")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may also come after options (`chat RUN --prompt X generation.seed=1`), where
    # argparse no longer takes positionals: collect those key=value words here.
    args, extra = parser.parse_known_args(argv)
    stray = [word for word in extra if "=" not in word or word.startswith("-")]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.command != "runs":
        _quiet_libraries()
    try:
        commands = {"train": cmd_train, "resume": cmd_resume, "export": cmd_export, "chat": cmd_chat, "data": cmd_data,
                    "runs": cmd_runs, "bench": cmd_bench}
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


def _train(run_dir: Path, resume: bool) -> int:
    from studio.events import ConsoleSink, JsonlSink, fan_out
    from studio.train import run_training

    stop = threading.Event()

    def request_stop(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        print("\nStopping after this step (a checkpoint is saved). Ctrl-C again to abort.", flush=True)
        stop.set()

    # Ctrl-C and `kill` both stop cleanly at the end of the current step.
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"Run folder: {run_dir}")
        result = run_training(run_dir, fan_out(JsonlSink(run_dir / "events.jsonl"), ConsoleSink()), stop, resume)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"\n{result.state} at step {result.step}. Next:")
    if result.state == "stopped":
        print(f"  python launch.py resume {run_dir}")
    print(f"  python launch.py chat {run_dir} --compare --prompt \"...\"")
    print(f"  python launch.py export {run_dir} --gguf q4_k_m")
    return 0


def cmd_train(args) -> int:
    from studio.config import load_recipe
    from studio.runs import create_run_dir

    cfg = load_recipe(args.recipe, args.overrides)
    return _train(create_run_dir(cfg), resume=False)


def cmd_resume(args) -> int:
    from studio.runs import find_run

    return _train(find_run(args.run), resume=True)


def cmd_export(args) -> int:
    from studio.events import ConsoleSink
    from studio.export import export_run
    from studio.runs import find_run, load_run_config

    run_dir = find_run(args.run)
    cfg = load_run_config(run_dir)
    gguf = tuple(args.gguf) if args.gguf is not None else cfg.export.gguf
    formats = tuple(args.formats) if args.formats is not None else cfg.export.formats
    started = time.time()
    result = export_run(run_dir, gguf, formats, ConsoleSink(), cfg.export.verify_tokens)
    if result.reports:
        print("\nReport cards:")
    colour = {"passed": "32", "warnings": "33", "failed": "31"} if sys.stdout.isatty() else {}
    for report in result.reports:
        headline = f"{Path(report.path).name}: {report.headline}"
        if report.state in colour:
            headline = f"\033[{colour[report.state]}m{headline}\033[0m"
        kept = "" if report.passed else " (not kept; see its .report.json)"
        print(f"  {headline}{kept}")
    print(f"\nExported in {time.time() - started:.0f} s to {result.out_dir}:")
    for path in result.files:
        print(f"  {path}")
    return 0 if result.passed else 1


def cmd_chat(args) -> int:
    from studio.chat_session import ChatSession

    # With a GGUF alone, the run's HF model is not needed: its tokenizer and template suffice.
    needs_hf = args.run and (not args.gguf or args.compare or args.base)
    session = ChatSession.open(args.run, args.gguf, args.overrides, load_hf=bool(needs_hf))
    try:
        if args.compare:
            modes = ["base", "tuned"] * (session.model is not None) + ["gguf"] * (session.llm is not None)
        else:
            modes = ["base"] if args.base else ["gguf" if args.gguf else session.default_mode]
        if args.prompt:
            for mode in modes:
                _print_reply(session, [{"role": "user", "content": args.prompt}], mode, label=args.compare)
            return 0
        return _repl(session, modes)
    finally:
        session.close()


def _print_reply(session, messages: list[dict], mode: str, label: bool) -> str:
    if label:
        print(f"[{mode}] ", end="", flush=True)
    pieces = []
    for piece in session.stream(messages, mode):
        pieces.append(piece)
        print(piece, end="", flush=True)
    print()
    return "".join(pieces)


def _repl(session, modes: list[str]) -> int:
    print(f"Chatting with {session.describe()}. Commands: /base /tuned /reset /quit")
    history: list[dict] = []
    mode = modes[-1]
    for line in sys.stdin:
        text = line.strip()
        if text in ("/quit", "/exit"):
            break
        if text in ("/base", "/tuned"):
            mode = text[1:]
            print(f"(now answering as the {mode} model)")
            continue
        if text == "/reset":
            history = []
            continue
        if not text:
            continue
        history.append({"role": "user", "content": text})
        history.append({"role": "assistant", "content": _print_reply(session, history, mode, label=False)})
    return 0


def cmd_data(args) -> int:
    from studio.config import load_recipe
    from studio.services import Studio

    cfg = load_recipe(args.recipe, args.overrides)
    p = Studio().preview_data(cfg, args.row)
    st = p.stats
    print(f"{cfg.data.path}: {p.rows} rows · format {p.format} · template {p.template} · columns {', '.join(p.columns)}")
    if not p.complete:
        of = f" of {p.size / 2**20:,.1f} MB" if p.size else ""
        print(f"a sample: the first {p.rows:,} rows{of} (training reads all of it)")
    if p.format == "fields":
        print("format fields: each row is read through the format-string template's fields")
    elif p.detected:
        print(f"format {p.format} detected from the columns (set data.format to override)")
    print(f"kept {st.rows} of {st.rows + len(p.skipped)} rows" + (f"; {len(p.skipped)} skipped:" if p.skipped else ""))
    for skipped in p.skipped[:20]:
        print(f"  skipped {skipped}")
    scope = f" (a sample of {st.rows})" if st.sampled else ""
    print(f"tokens{scope}: {st.tokens:,} in all, {st.trained_tokens:,} trained ({100 * st.trained_tokens / max(st.tokens, 1):.0f}%)")
    print(f"max_length {p.max_length}: {st.rows_cut} rows cut, {st.responses_cut} of them lose response tokens")
    print(f"rows with nothing to learn: {st.fully_masked} · duplicate rows: {st.duplicates}")
    if p.format == "preference":
        print(f"pairs whose chosen and rejected responses are the same: {st.identical_pairs}")
    for warning in p.warnings:
        print(f"warning: {warning}")
    print("token length per row:")
    for low, count in _histogram(p.lengths):
        marker = "  <- cut at max_length" if low > p.max_length else ""
        print(f"  {low:>6}+ {'█' * max(1, round(40 * count / len(p.lengths)))} {count}{marker}")
    if p.row_error:
        print(f"\nrow {p.row} is skipped: {p.row_error}")
        return 0
    print(f"\nrow {p.row} ({len(p.tokens)} tokens, {p.trained_tokens} trained; trained tokens in [brackets]):")
    print(_bracket_trained(p.tokens))
    if p.rejected:
        print(f"\nrow {p.row}, rejected response (shown for comparison, not trained by SFT):")
        print(_bracket_trained(p.rejected))
    return 0


def _histogram(lengths: list[int], bins: int = 10) -> list[tuple[int, int]]:
    width = max(1, -(-(max(lengths) - min(lengths) + 1) // bins))
    counts: dict[int, int] = {}
    for n in lengths:
        low = min(lengths) + (n - min(lengths)) // width * width
        counts[low] = counts.get(low, 0) + 1
    return sorted(counts.items())


def _bracket_trained(tokens: list[tuple[str, bool, bool]]) -> str:
    out, inside = [], False
    for piece, trained, _ in tokens:
        if trained != inside:
            out.append("[" if trained else "]")
            inside = trained
        out.append(piece)
    return "".join(out) + ("]" if inside else "")


def cmd_runs(args) -> int:
    from studio.runs import list_runs, read_status

    for run_dir in list_runs(args.runs_dir):
        status = read_status(run_dir)
        print(f"{run_dir}  {status.get('state', '?'):9}  step {status.get('step', '-')}  loss {status.get('loss', '-')}")
    return 0


def cmd_bench(args) -> int:
    from studio.bench import BenchSpec, describe, longest_sequence, run_bench, save_report

    spec = BenchSpec(model=args.model, method=args.method, batch=args.batch, length=args.length, steps=args.steps,
                     warmup=args.warmup,
                     rank=args.rank, profile=args.profile, overrides=tuple(args.overrides))
    if args.max_memory:
        report = longest_sequence(spec, cap_gib=_gib(args.max_memory))
    else:
        report = run_bench(spec, reference=not args.no_reference)
    report["command"] = "python launch.py " + shlex.join(args.argv)
    name = Path(args.model).name
    what = f"longest-{args.max_memory}" if args.max_memory else f"b{args.batch}-l{args.length}"
    out = Path(args.out) if args.out else Path("bench") / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}-{args.method}-{what}.json"
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
