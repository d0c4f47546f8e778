"""How launch.py reads its words: a command's arguments, and its key=value overrides wherever they were typed.

    args = parse_args(build_parser(), ["eval", "RUN", "--models", "base", "tuned", "generation.seed=1"])
    args.overrides    # ["generation.seed=1"], not a model name
"""

from __future__ import annotations

import argparse
import collections
import re


# A dotted override such as generation.max_new_tokens=8 (a file path with '=' in it has a '/' first).
OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.\w+)+=")


def parse_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """The command's arguments, its key=value overrides collected wherever they stand."""
    kept, pulled = _overrides_out_of_lists(parser, argv)
    # Overrides may also come after options (`chat RUN --prompt X generation.seed=1`), where
    # argparse no longer takes positionals: collect those key=value words here.
    args, extra = parser.parse_known_args(kept)
    extra += pulled
    stray = [word for word in extra if "=" not in word or word.startswith("-")]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = _in_typed_order([*args.overrides, *extra], argv)
    return args


def _in_typed_order(overrides: list[str], argv: list[str]) -> list[str]:
    """The overrides in the order they were typed (a later value of the same key wins)."""
    left = collections.Counter(overrides)
    ordered = []
    for word in argv:
        if left[word]:
            left[word] -= 1
            ordered.append(word)
    return ordered


def _overrides_out_of_lists(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], list[str]]:
    """Take key=value words out of the values of list options (`--models base tuned generation.seed=1`).

    argparse would give them to the list option (as a model name, say) instead of the overrides.
    """
    command = next((word for word in argv if not word.startswith("-")), None)
    sub = next((a.choices.get(command) for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    if sub is None:
        return argv, []
    lists = {name for a in sub._actions if a.option_strings and a.nargs in ("*", "+") for name in a.option_strings}
    kept, pulled, in_list = [], [], False
    for word in argv:
        if word.startswith("-"):
            in_list = word in lists
        elif in_list and OVERRIDE.match(word):
            pulled.append(word)
            continue
        kept.append(word)
    return kept, pulled
