"""Data tab: load data, see its detected format, the rendered row token by token, skipped rows, the length histogram.

A big file is previewed from its first rows (the summary says so); training reads all of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pandas as pd

from studio.config import RunConfig
from studio.errors import StudioError
from studio.data.preview import data_columns
from studio.data.templates import GALLERY
from studio.ui.controls import control, more_settings
from studio.ui.form import config_from_form, named

MAPPED_FIELDS = ("instruction", "input", "output", "prompt", "completion", "chosen", "rejected", "text", "messages")
SHOWN_SKIPPED = 50  # malformed rows listed by name; the count covers all
TOKEN_COLOURS = {"trained": "#16a34a", "masked": "#9ca3af", "special, trained": "#7c3aed", "special, masked": "#c4b5fd"}


@dataclass
class DataTab:
    upload: gr.File
    custom: gr.Textbox  # a custom template, typed in its own box
    row: gr.Number
    preview: gr.Button
    summary: gr.Markdown
    tokens: gr.HighlightedText
    rejected: gr.HighlightedText
    histogram: gr.BarPlot
    skipped: gr.Markdown


def build(studio, form: dict, start: RunConfig) -> DataTab:
    with gr.Row():
        with gr.Column(scale=2):
            form["data.path"] = control("data.path", start, label="Dataset", elem_id="data-path")
            upload = gr.File(label="…or upload a file", file_types=[".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt"])
            with gr.Row():
                form["data.format"] = control("data.format", start)
                form["data.template"] = control("data.template", start, label="Prompt template",
                                                choices=["auto", "model", *GALLERY])
            with gr.Accordion("Custom template: a format string with named fields, or Jinja", open=False):
                custom = gr.Textbox(lines=3, label="Custom template",
                                    placeholder="Summarize:\n{dialogue}\n---\nSummary: {summary}",
                                    info="The last field is the response; the others make the prompt.")
            form["data.train_on"] = control("data.train_on", start, radio=True)
            with gr.Accordion("Reading: hub split and subset, .txt documents, malformed and huge rows", open=False):
                with gr.Row():
                    form["data.split"] = control("data.split", start, min_width=120)
                    form["data.subset"] = control("data.subset", start, min_width=120)
                    form["data.text_unit"] = control("data.text_unit", start, radio=True)
                with gr.Row():
                    form["data.max_bad_fraction"] = control("data.max_bad_fraction", start)
                    form["data.max_row_chars"] = control("data.max_row_chars", start)
            with gr.Accordion("Column mapping (when the file's names differ)", open=False):
                with gr.Row():
                    for name in MAPPED_FIELDS:
                        form[f"data.columns.{name}"] = gr.Dropdown([""], value=start.data.columns.get(name, ""),
                                                                   label=name, allow_custom_value=True,
                                                                   min_width=120, elem_id=f"map-{name}")
            with gr.Row():
                form["data.max_samples"] = control("data.max_samples", start)
                form["data.eval_fraction"] = control("data.eval_fraction", start)
                form["data.eval_path"] = control("data.eval_path", start, label="…or an eval file")
            with gr.Accordion("More data settings", open=False):
                more_settings(form, start, ("data",))
            with gr.Row():
                row = gr.Number(0, precision=0, label="Row to show", minimum=0, elem_id="data-row")
                preview = gr.Button("Preview", variant="primary")
        with gr.Column(scale=3):
            summary = gr.Markdown(elem_id="data-summary")
            tokens = gr.HighlightedText(label="What the model sees: trained tokens green, masked grey, special tokens purple",
                                        color_map=TOKEN_COLOURS, show_legend=True, combine_adjacent=False,
                                        elem_id="token-preview")
            rejected = gr.HighlightedText(label="Rejected side of this pair: dpo and orpo train it (pushed down); sft "
                                          "shows it for comparison only", color_map=TOKEN_COLOURS, show_legend=True, combine_adjacent=False,
                                          visible=False, elem_id="rejected-preview")
            histogram = gr.BarPlot(x="tokens", y="rows", color="fits", title="Token length per row",
                                   x_title="tokens (bins)", y_title="rows", height=260, elem_id="length-histogram")
            skipped = gr.Markdown(elem_id="data-skipped")
    return DataTab(upload, custom, row, preview, summary, tokens, rejected, histogram, skipped)


def wire(studio, form: dict, tab: DataTab) -> None:
    keys, inputs = list(form), list(form.values())

    mapping = [form[f"data.columns.{name}"] for name in MAPPED_FIELDS]

    def show(row: int, *values):
        """Inputs: row number and the run form.
        Outputs: summary, token highlights, rejected-response highlights, histogram, skipped rows, mapping choices."""
        chosen = [values[keys.index(f"data.columns.{name}")] for name in MAPPED_FIELDS]
        try:
            cfg = config_from_form(keys, values)
        except StudioError as exc:
            return f"⚠️ {exc}", None, gr.update(visible=False), None, "", *[gr.update() for _ in mapping]
        try:
            p = studio.preview_data(cfg, int(row or 0))
        except StudioError as exc:  # e.g. a format not told from the columns: the mapping needs the columns most
            return f"⚠️ {exc}", None, gr.update(visible=False), None, "", *_mapping_choices(cfg, None, chosen)
        rejected = gr.update(value=_highlights(p.rejected), visible=bool(p.rejected))
        return (_summary(p), _highlights(p.tokens), rejected, _histogram(p), _skipped(p),
                *_mapping_choices(cfg, p.columns, chosen))

    named(show, keys, ("row",))
    tab.upload.upload(lambda f: f, tab.upload, form["data.path"], api_visibility="private")
    # A custom template is typed in its own box (several lines) and becomes the template choice.
    tab.custom.change(lambda text: text or "auto", tab.custom, form["data.template"], api_visibility="private")
    outputs = [tab.summary, tab.tokens, tab.rejected, tab.histogram, tab.skipped, *mapping]
    tab.preview.click(show, [tab.row, *inputs], outputs, api_name="preview_data")


def _mapping_choices(cfg, columns: list[str] | None, chosen: list[str]) -> list:
    """The data's columns as choices of every mapping dropdown, each keeping its chosen value."""
    if columns is None:
        try:
            columns = data_columns(cfg.data)
        except StudioError:
            return [gr.update() for _ in chosen]
    return [gr.update(choices=list(dict.fromkeys(["", *columns, value or ""])), value=value or "") for value in chosen]


def _summary(p) -> str:
    st = p.stats
    cut = (f"⚠️ **{st.rows_cut} rows** longer than max length {p.max_length} would be cut "
           f"({st.responses_cut} lose response tokens)") if st.rows_cut else f"no row is longer than max length {p.max_length}"
    warnings = [f"⚠️ {w}" for w in p.warnings]
    warnings += [f"⚠️ {st.fully_masked} rows have nothing to learn (all masked)"] if st.fully_masked else []
    warnings += [f"{st.duplicates} duplicate rows"] if st.duplicates else []
    warnings += [f"{st.identical_pairs} pairs have the same chosen and rejected response"] if st.identical_pairs else []
    scope = " (of the sample)" if st.sampled else ""
    label = {True: ", labelled **good**", False: ", labelled **bad**"}.get(p.label, "")
    row = (f"⚠️ Row {p.row} is skipped: {p.row_error}" if p.row_error
           else f"Row {p.row}{label}: {p.row_tokens:,} tokens, {p.trained_tokens:,} trained")
    return (f"**{p.count_line}** · format **{p.format}** · template **{p.template}** · columns {', '.join(p.columns)}\n\n"
            + _reading(p)
            + f"Tokens{scope}: {st.tokens:,}, of which **{st.trained_tokens:,} trained** · {cut}"
            + ("  \n" + " · ".join(warnings) if warnings else "")
            + f"\n\n{row}")


def _reading(p) -> str:
    """What was read: detection, skipped rows and whether the rows are a sample."""
    if p.format == "fields":
        lines = ["Format **fields**: each row is read through the format-string template's fields."]
    elif p.detected:
        lines = [f"Format **{p.format}** detected from the columns (choose another under Format to override)."]
    else:
        lines = [f"Format **{p.format}** as set."]
    if p.skipped:
        lines.append(f"⚠️ **{len(p.skipped):,} malformed rows skipped** (listed below).")
    if p.sample_note:
        lines.append(f"ℹ️ {p.sample_note}")
    return "  \n".join(lines) + "\n\n"


def _skipped(p) -> str:
    if not p.skipped:
        return ""
    listed = "\n".join(f"- `{s.where}`: {s.reason}" for s in p.skipped[:SHOWN_SKIPPED])
    more = f"\n- … and {len(p.skipped) - SHOWN_SKIPPED} more" if len(p.skipped) > SHOWN_SKIPPED else ""
    return f"**Skipped rows** (left out of training):\n{listed}{more}"


def _highlights(tokens) -> list[tuple[str, str]]:
    # New lines would vanish in the flow of tokens: show them as ↵.
    return [(piece.replace("\n", "↵"), ("special, " if special else "") + ("trained" if trained else "masked"))
            for piece, trained, special in tokens]


def _histogram(p) -> pd.DataFrame:
    """Rows per length bin, coloured by whether they fit; a pair's two sides as two series."""
    sides = [("", p.lengths)] if not p.rejected_lengths else [("chosen ", p.lengths), ("rejected ", p.rejected_lengths)]
    width = max(8, (max(max(lengths) for _, lengths in sides) // 20) or 1)
    frames = []
    for side, lengths in sides:
        frame = pd.DataFrame({"tokens": [(n // width) * width for n in lengths]})
        frame["fits"] = [side + ("cut" if n > p.max_length else f"≤ {p.max_length}") for n in lengths]
        frames.append(frame)
    return pd.concat(frames).groupby(["tokens", "fits"]).size().reset_index(name="rows")
