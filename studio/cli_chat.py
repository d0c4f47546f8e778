"""`launch.py chat`: a run's model (adapter on or off), its GGUF, or a GGUF file alone, streaming in the terminal.

    python launch.py chat runs/<time>_quickstart --compare --prompt "What is the capital of Peru?"
    python launch.py chat runs/<time>_quickstart            # interactive; /base /tuned /reset /quit
    python launch.py chat --gguf model.gguf
"""

from __future__ import annotations

import sys


def cmd_chat(args) -> int:
    from studio.chat.session import ChatSession
    from studio.config import RunConfig
    from studio.recipes import apply_overrides
    from studio.runs import find_run, load_run_config

    # With a GGUF alone, the run's HF model is not needed: its tokenizer and template suffice.
    needs_hf = args.run and (not args.gguf or args.compare or args.base)
    run_dir = find_run(args.run, args.runs_dir) if args.run else None
    cfg = apply_overrides(load_run_config(run_dir) if run_dir else RunConfig(), args.overrides)
    session = ChatSession.open(run_dir, args.gguf, cfg, load_hf=bool(needs_hf))
    try:
        if args.compare:
            modes = [mode for mode in ("base", "tuned", "gguf") if mode in session.repliers]
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
            if text[1:] not in session.repliers:
                print(f"(no {text[1:]} model is loaded in this chat)")
                continue
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
