"""Data tab: load a file, see its format, the rendered row token by token, and the length histogram."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from studio.errors import StudioError
from studio.templates import GALLERY
from studio.ui.form import config_from_form, named

SAMPLE = "assets/sample_instructions.jsonl"
MAPPED_FIELDS = ("instruction", "input", "output", "prompt", "completion", "text", "messages")
TOKEN_COLOURS = {"trained": "#16a34a", "masked": "#9ca3af", "special, trained": "#7c3aed", "special, masked": "#c4b5fd"}


def build(studio, form: dict) -> dict:
    with gr.Row():
        with gr.Column(scale=2):
            form["data.path"] = gr.Textbox(SAMPLE, label="Dataset file", info="jsonl, json, csv, tsv, parquet, txt, or a saved datasets folder")
            upload = gr.File(label="…or upload a file", file_types=[".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt"])
            with gr.Row():
                form["data.format"] = gr.Dropdown(["auto", "alpaca", "messages", "sharegpt", "prompt_completion", "text"],
                                                  value="auto", label="Format")
                form["data.template"] = gr.Dropdown(["auto", "model", *GALLERY], value="auto", allow_custom_value=True,
                                                    label="Prompt template", info="or the path of a .jinja file")
            form["data.train_on"] = gr.Radio(["responses", "all"], value="responses", label="Train on")
            with gr.Accordion("Column mapping (when the file's names differ)", open=False):
                with gr.Row():
                    for name in MAPPED_FIELDS:
                        form[f"data.columns.{name}"] = gr.Dropdown([""], value="", label=name, allow_custom_value=True,
                                                                   min_width=120)
            with gr.Row():
                form["data.max_samples"] = gr.Number(0, precision=0, label="Max rows (0: all)")
                form["data.eval_fraction"] = gr.Number(0.0, label="Eval fraction", minimum=0, maximum=0.5)
            with gr.Row():
                row = gr.Number(0, precision=0, label="Row to show", minimum=0, elem_id="data-row")
                preview = gr.Button("Preview", variant="primary")
        with gr.Column(scale=3):
            summary = gr.Markdown(elem_id="data-summary")
            tokens = gr.HighlightedText(label="What the model sees: trained tokens green, masked grey, special tokens purple",
                                        color_map=TOKEN_COLOURS, show_legend=True, combine_adjacent=False,
                                        elem_id="token-preview")
            histogram = gr.BarPlot(x="tokens", y="rows", color="fits", title="Token length per row",
                                   x_title="tokens (bins)", y_title="rows", height=260, elem_id="length-histogram")
    return {"upload": upload, "row": row, "preview": preview, "summary": summary, "tokens": tokens,
            "histogram": histogram}


def wire(studio, form: dict, refs: dict) -> None:
    keys, inputs = list(form), list(form.values())

    mapping = [form[f"data.columns.{name}"] for name in MAPPED_FIELDS]

    def show(row: int, *values):
        """Inputs: row number and the run form. Outputs: summary, token highlights, histogram, mapping choices."""
        try:
            p = studio.preview_data(config_from_form(keys, values), int(row or 0))
        except StudioError as exc:
            return f"⚠️ {exc}", None, None, *[gr.update() for _ in mapping]
        choices = gr.update(choices=["", *p.columns])
        return _summary(p), _highlights(p), _histogram(p), *[choices for _ in mapping]

    named(show, keys, ("row",))
    refs["upload"].upload(lambda f: f, refs["upload"], form["data.path"], api_visibility="private")
    refs["preview"].click(show, [refs["row"], *inputs], [refs["summary"], refs["tokens"], refs["histogram"], *mapping],
                          api_name="preview_data")


def _summary(p) -> str:
    st = p.stats
    cut = (f"⚠️ **{st.rows_cut} rows** longer than max length {p.max_length} would be cut "
           f"({st.responses_cut} lose response tokens)") if st.rows_cut else f"no row is longer than max length {p.max_length}"
    warnings = [f"⚠️ {w}" for w in p.warnings]
    warnings += [f"⚠️ {st.fully_masked} rows have nothing to learn (all masked)"] if st.fully_masked else []
    warnings += [f"{st.duplicates} duplicate rows"] if st.duplicates else []
    scope = f" (sample of {st.rows})" if st.sampled else ""
    return (f"**{p.rows} rows** · format **{p.format}** · template **{p.template}** · columns {', '.join(p.columns)}\n\n"
            f"Tokens{scope}: {st.tokens:,}, of which **{st.trained_tokens:,} trained** · {cut}"
            + ("  \n" + " · ".join(warnings) if warnings else "")
            + f"\n\nRow {p.row}: {len(p.tokens)} tokens, {p.trained_tokens} trained")


def _highlights(p) -> list[tuple[str, str]]:
    # New lines would vanish in the flow of tokens: show them as ↵.
    return [(piece.replace("\n", "↵"), ("special, " if special else "") + ("trained" if trained else "masked"))
            for piece, trained, special in p.tokens]


def _histogram(p) -> pd.DataFrame:
    width = max(8, (max(p.lengths) // 20) or 1)
    frame = pd.DataFrame({"tokens": [(n // width) * width for n in p.lengths]})
    frame["fits"] = ["cut" if n > p.max_length else f"≤ {p.max_length}" for n in p.lengths]
    return frame.groupby(["tokens", "fits"]).size().reset_index(name="rows")
