"""`launch.py data`: what a recipe's data (or a data file) trains on: format, statistics, a row token by token.

    python launch.py data recipes/quickstart.yaml --row 3
    python launch.py data my.jsonl               # a data file: previewed with the quickstart's model
"""

from __future__ import annotations

import shlex
from pathlib import Path

def cmd_data(args) -> int:
    from studio.services import Studio

    cfg, is_data_file = _data_config(args)
    p = Studio().preview_data(cfg, args.row)
    st = p.stats
    if is_data_file:
        print(_data_file_note(cfg, p.template))
    print(f"{cfg.data.path}: {p.count_line} · format {p.format} · template {p.template} · columns {', '.join(p.columns)}")
    if p.sample_note:
        print(p.sample_note)
    if p.format == "fields":
        print("format fields: each row is read through the format-string template's fields")
    elif p.detected:
        print(f"format {p.format} detected from the columns (set data.format to override)")
    for skipped in p.skipped[:20]:
        print(f"  skipped {skipped}")
    if len(p.skipped) > 20:
        print(f"  ... and {len(p.skipped) - 20:,} more skipped")
    scope = " (of the sample)" if st.sampled else ""
    print(f"tokens{scope}: {st.tokens:,} in all, {st.trained_tokens:,} trained ({100 * st.trained_tokens / max(st.tokens, 1):.0f}%)")
    print(f"max_length {p.max_length}: {st.rows_cut} rows cut, {st.responses_cut} of them lose response tokens")
    print(f"rows with nothing to learn: {st.fully_masked} · duplicate rows: {st.duplicates}")
    if p.format == "preference":
        print(f"pairs whose chosen and rejected responses are the same: {st.identical_pairs}")
    for warning in p.warnings:
        print(f"warning: {warning}")
    sides = [("", p.lengths)] if not p.rejected_lengths else [(" (chosen side)", p.lengths),
                                                               (" (rejected side)", p.rejected_lengths)]
    for side, lengths in sides:
        print(f"token length per row{side}:")
        for low, count in _histogram(lengths):
            marker = "  <- cut at max_length" if low > p.max_length else ""
            print(f"  {low:>6}+ {'█' * max(1, round(40 * count / len(lengths)))} {count}{marker}")
    if p.row_error:
        print(f"\nrow {p.row} is skipped: {p.row_error}")
        return 0
    label = {True: ", labelled good", False: ", labelled bad"}.get(p.label, "")
    side = ", chosen side" if p.rejected_lengths else ""
    print(f"\nrow {p.row}{side}{label} ({p.row_tokens:,} tokens, {p.trained_tokens:,} trained; trained tokens in "
          "[brackets]):")
    print(_bracket_trained(p.tokens))
    if p.rejected:
        how = "trained" if p.rejected_lengths else "shown for comparison, not trained by sft"
        print(f"\nrow {p.row}, rejected side ({how}):")
        print(_bracket_trained(p.rejected))
    if p.reward_columns is not None:
        print(f"\nrow {p.row}: grpo trains on the model's own completions of this prompt; the rewards also read:")
        for name, value in p.reward_columns.items():
            print(f"  {name}: {value!r}")
    return 0


QUICKSTART = Path(__file__).resolve().parent.parent / "recipes" / "quickstart.yaml"


def _data_config(args):
    """(config, whether a data file was given): a data file instead of a recipe previews with the quickstart's model."""
    from studio.cli import load_recipe_with_notes
    from studio.data.files import SUFFIXES
    from studio.recipes import apply_overrides, from_dict, load_recipe

    given = Path(args.recipe)
    if not (given.suffix.lower() in SUFFIXES or given.is_dir()):
        return load_recipe_with_notes(args.recipe, args.overrides), False
    model = load_recipe(QUICKSTART).model.name_or_path
    raw = {"model": {"name_or_path": model}, "data": {"path": str(given)}}
    return apply_overrides(from_dict(raw), args.overrides), True


def _data_file_note(cfg, template: str) -> str:
    path = shlex.quote(cfg.data.path)
    return (f"{cfg.data.path} is a data file, not a recipe: previewed with model {cfg.model.name_or_path} and template "
            f"{template} (the quickstart's model; choose others with model.name_or_path=... data.template=...).\n"
            f"To train on it: python launch.py train {_relative(QUICKSTART)} data.path={path}, or write a recipe "
            "(recipes/*.yaml) with data.path set to it.\n")


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


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
