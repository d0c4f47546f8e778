"""Export tab: adapter, merged weights and GGUF files, each GGUF with its report card; sharing them on the hub."""

from __future__ import annotations

import html
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from studio.config import GGUF_TYPES
from studio.fields import field_info
from studio.errors import StudioError
from studio.export.verify import GgufReport
from studio.hardware import GIB
from studio.ui.chat_tab import ChatTab
from studio.ui.hook import Hook
from studio.ui.live import IDLE_POLL_S, poll_outputs

STATUS_ICON = {"pass": "✅", "warn": "🟡", "fail": "⛔"}
STATE_ICON = {"passed": "✅", "warnings": "🟡", "failed": "⛔"}
HEADLINE_STYLE = {
    state: f"padding:0.5em 0.8em;border-radius:6px;font-weight:bold;font-size:1.1em;background:{bg};color:{fg}"
    for state, bg, fg in (("passed", "#dcfce7", "#14532d"), ("warnings", "#fef9c3", "#713f12"),
                          ("failed", "#fee2e2", "#7f1d1d"))
}


@dataclass
class ExportTab:
    run: gr.Dropdown
    checkpoint: gr.Dropdown
    formats: gr.CheckboxGroup
    gguf: gr.CheckboxGroup
    disk: gr.Markdown
    start: gr.Button
    stop: gr.Button
    notice: gr.Markdown
    status: gr.Markdown
    cards: gr.Markdown
    files: gr.Markdown
    modelfile: gr.Code
    open_chat: gr.Button
    repo: gr.Textbox
    what: gr.Radio
    private: gr.Checkbox
    share: gr.Button
    shared: gr.Markdown
    timer: gr.Timer
    poll: Hook = field(init=False)  # draws the export job's snapshot (a reload re-attaches through it)
    refresh: Hook = field(init=False)  # the run choices, the newest run with weights selected


def build(studio, form: dict) -> ExportTab:
    with gr.Row():
        with gr.Column(scale=2):
            run = gr.Dropdown([], label="Run", allow_custom_value=True, elem_id="export-run")
            checkpoint = gr.Dropdown([("final weights", "")], value="", label="Weights of",
                                     info=field_info("export.checkpoint").help, elem_id="export-checkpoint")
            formats = gr.CheckboxGroup(list(field_info("export.formats").choices), value=[], label="Weights")
            gguf = gr.CheckboxGroup(list(reversed(GGUF_TYPES)), value=["q8_0"], label="GGUF types", elem_id="export-gguf",
                                    info="Ticked when a run is picked: the type whose report card passes for a model "
                                         "of its size (q8_0 under 1B parameters, q4_k_m from 1B).")
            disk = gr.Markdown(_disk_text(studio.runs_dir))
            with gr.Row():
                start = gr.Button("Export", variant="primary", elem_id="export-start")
                stop = gr.Button("Stop", variant="stop", elem_id="export-stop")
            notice = gr.Markdown(elem_id="export-notice")
        with gr.Column(scale=3):
            status = gr.Markdown("No export yet.", elem_id="export-status")
            cards = gr.Markdown(elem_id="report-cards")
            files = gr.Markdown(elem_id="export-files")
            modelfile = gr.Code(label="Ollama Modelfile", language=None, elem_id="modelfile")
            open_chat = gr.Button("Open the GGUF in Chat", elem_id="open-in-chat")
    with gr.Accordion("Share on the Hugging Face hub", open=False):
        gr.Markdown("Uploads with a model card (recipe, data, latest scorecard, report cards). Goes online for the "
                    "upload alone and needs a token that can write: `HF_TOKEN` or `hf auth login` (never stored).")
        with gr.Row():
            repo = gr.Textbox("", label="Hub repo", placeholder="user/name", elem_id="share-repo")
            what = gr.Radio(["adapter", "merged", "gguf"], value="gguf", label="Share", elem_id="share-what")
            private = gr.Checkbox(True, label="Private repo", elem_id="share-private")
            share = gr.Button("Share", elem_id="share-start")
        shared = gr.Markdown(elem_id="share-result")
    return ExportTab(run, checkpoint, formats, gguf, disk, start, stop, notice, status, cards, files, modelfile,
                     open_chat, repo, what, private, share, shared, gr.Timer(IDLE_POLL_S))


def wire(studio, form: dict, tab: ExportTab, chat: ChatTab, tabs: gr.Tabs) -> None:
    def start(run: str, checkpoint: str, formats: list[str], gguf: list[str]):
        """Inputs: run, checkpoint ("" for the final weights), weight formats, GGUF types. Outputs: notice, timer on."""
        try:
            studio.start_export(studio.find_run(run), tuple(gguf), tuple(formats), checkpoint or "")
        except StudioError as exc:
            return f"⚠️ {exc}", gr.skip()
        return f"Exporting **{run}**{f' ({checkpoint})' if checkpoint else ''}…", gr.Timer(1.0)

    def checkpoints(run: str, current: str):
        """Inputs: run, the checkpoint shown. Outputs: the run's checkpoints to export, the shown one kept if it has it."""
        from studio.export.exporting import run_checkpoints

        try:
            names = run_checkpoints(studio.find_run(run)) if run else []
        except StudioError:
            names = []
        return gr.update(choices=[("final weights", ""), *((n, n) for n in names)],
                         value=current if current in names else "")

    def share(run: str, repo: str, what: str, private: bool):
        """Inputs: run, hub repo, what to share, private. Outputs: the result (a link, or what to do first)."""
        from studio.share import share_run

        try:
            result = share_run(studio.find_run(run or ""), (repo or "").strip(), what, private)
        except StudioError as exc:
            return f"⚠️ {exc}"
        return f"✅ Shared {len(result.files)} files to [{result.repo}]({result.url}) ({'private' if private else 'public'})."

    def stop():
        """Inputs: none. Outputs: notice. The export ends at its next stage; finished files stay."""
        if studio.jobs.snapshot().kind == "export":
            studio.jobs.stop()
            return "Stopping after the current stage…"
        return "No export is running."

    def poll(shown: tuple):
        """Inputs: what the page shows. Outputs: status, report cards, files, Modelfile, shown, timer."""
        return poll_outputs(studio.jobs.snapshot(), shown, export_view, 4, fast_s=1.0)

    def runs():
        """Inputs: none. Outputs: run choices with their state, the newest run that has weights selected."""
        states = studio.run_states()
        exportable = [s for s in states if s.state in EXPORTABLE and _has_weights(s.run_dir)]
        return gr.update(choices=[(f"{s.run_dir.name} · {s.state}", str(s.run_dir)) for s in states],
                         value=str(exportable[-1].run_dir) if exportable else None)

    def suggest_type(run: str):
        """Inputs: run. Outputs: the GGUF types ticked: the one that keeps this model's fine-tune."""
        from studio.export.exporting import recommended_gguf_type

        try:
            return gr.update(value=[recommended_gguf_type(studio.find_run(run))]) if run else gr.skip()
        except StudioError:
            return gr.skip()  # a half-typed run name: leave the choice alone

    def open_in_chat(run: str):
        """Inputs: run. Outputs: chat run, chat GGUF, the Chat tab selected."""
        ggufs = [g for g in studio.list_ggufs() if run and g.startswith(str(Path(run)))]
        choice = ggufs[-1] if ggufs else None
        return gr.update(value=run), gr.update(choices=studio.list_ggufs(), value=choice), gr.Tabs(selected="chat")

    tab.stop.click(stop, None, tab.notice, api_name="stop_export")
    tab.start.click(start, [tab.run, tab.checkpoint, tab.formats, tab.gguf], [tab.notice, tab.timer], api_name="export")
    tab.share.click(share, [tab.run, tab.repo, tab.what, tab.private], tab.shared, api_name="share")
    shown = gr.State(())
    outputs = [tab.status, tab.cards, tab.files, tab.modelfile, shown, tab.timer]
    tab.timer.tick(poll, shown, outputs, api_name="export_snapshot", show_progress="hidden")
    tab.poll = Hook(poll, shown, outputs)
    tab.refresh = Hook(runs, None, [tab.run])
    tab.run.change(suggest_type, tab.run, tab.gguf, show_progress="hidden")
    tab.run.change(checkpoints, [tab.run, tab.checkpoint], tab.checkpoint, show_progress="hidden",
                   api_name="export_checkpoints")
    tab.open_chat.click(open_in_chat, tab.run, [chat.run, chat.gguf, tabs], api_name="open_in_chat")


def export_view(snap) -> tuple[str, str, str, str]:
    if snap.kind != "export":
        return "No export yet.", "", "", ""
    stages = [e for e in snap.events if e.kind == "stage"]
    reports: list[GgufReport] = [e.extra["report"] for e in stages if "report" in e.extra]
    head = {"running": "⏳ Exporting", "completed": "✅ Done", "failed": "⛔ Failed",
            "stopped": "⏸️ Stopped (finished files kept)"}.get(snap.state, snap.state)
    status = f"{head} **{snap.name}**"
    if snap.state == "running" and stages:
        status += f" · {stages[-1].message.splitlines()[0]}"
    if snap.error:
        status += f"\n\n⚠️ {snap.error}"
    files = snap.result.files if snap.result is not None else []
    listing = "\n".join(f"- `{p}`" for p in files)
    modelfiles = [p for p in files if str(p).endswith(".Modelfile")]
    return status, "\n\n".join(report_card(r) for r in reports), listing, \
        (Path(modelfiles[-1]).read_text() if modelfiles else "")


def report_card(report: GgufReport) -> str:
    """Markdown: the headline first, coloured by state, then the checks and the answers side by side."""
    state = report.state
    kept = "" if report.passed else " · file not kept"
    rows = "\n".join(f"| {STATUS_ICON[c.status]} {c.name} | {_cell(c.detail)} |" for c in report.checks)
    samples = "\n".join(f"| {_cell(s.prompt[:80])} | {_cell(repr(s.hf))} | {_cell(repr(s.base))} | "
                        f"{_cell(repr(s.gguf))} | {s.matching_tokens}/{s.of} |" for s in report.samples)
    return (f'<div class="report-headline report-{state}" style="{HEADLINE_STYLE[state]}">'
            f"{STATE_ICON[state]} {html.escape(report.headline)}</div>\n\n"
            f"**{Path(report.path).name}** · {report.size_bytes / 2**20:.1f} MiB{kept}\n\n"
            f"| check | result |\n|---|---|\n{rows}\n\n"
            f"| prompt | fine-tuned (HF) | base (HF) | GGUF | same tokens as fine-tuned |\n|---|---|---|---|---|\n{samples}")


def _cell(text: str) -> str:
    """Table-safe text: tokens such as </s> must show, not vanish as HTML tags."""
    return html.escape(text).replace("|", "\\|").replace("\n", " ")


EXPORTABLE = ("completed", "stopped", "diverged", "interrupted")


def _has_weights(run_dir: Path) -> bool:
    return (run_dir / "adapter").is_dir() or (run_dir / "model").is_dir()


def _disk_text(folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free / GIB
    return f"Free disk in `{folder}`: **{free:.1f} GiB** (checked again before anything is written)"
