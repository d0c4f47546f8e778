"""Evaluate tab: the scorecard of a run's models, their answers side by side, and runs compared.

Every action has an API name, so the tab is driven by gradio_client as by a person:
/evaluation_runs, /start_evaluation, /stop_evaluation, /evaluation_snapshot, /saved_evaluations,
/show_evaluation, /export_best, /show_rows, /compare_runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import pandas as pd

from studio.errors import StudioError
from studio.evaluate.evaluation import MODEL_CHOICES, EvalSpec
from studio.evaluate.scorecard import ModelRow, Scorecard, build_scorecard, table_rows
from studio.evaluate.scores import METRICS
from studio.evaluate.store import ROW_FILTERS, list_evals, load_eval, side_by_side
from studio.ui.export_tab import ExportTab
from studio.ui.hook import Hook
from studio.ui.live import IDLE_POLL_S, poll_outputs

EMPTY = pd.DataFrame()
EMPTY_CURVE = pd.DataFrame({"step": [], "value": [], "run": []})


@dataclass
class EvaluateTab:
    timer: gr.Timer
    run: gr.Dropdown
    rows: gr.Dropdown
    limit: gr.Number
    models: gr.CheckboxGroup
    other: gr.Textbox
    judge: gr.Textbox
    metric: gr.Dropdown
    batch: gr.Number
    max_new: gr.Number
    checks: gr.Textbox
    start: gr.Button
    stop: gr.Button
    notice: gr.Markdown
    status: gr.Markdown
    table: gr.Dataframe  # the scorecard
    verdict: gr.Markdown
    export_best: gr.Button  # sends the weights the verdict ships (a checkpoint, or the final ones) to the Export tab
    saved: gr.Dropdown  # saved evaluations of the run
    filter: gr.Radio  # which rows the answers table shows
    first: gr.Dropdown
    second: gr.Dropdown
    answers: gr.Dataframe
    compare_runs: gr.Dropdown
    compare: gr.Button
    loss_plot: gr.LinePlot
    eval_plot: gr.LinePlot
    differences: gr.Dataframe
    finals: gr.Dataframe
    poll: Hook = field(init=False)  # draws the evaluation job's snapshot (a reload re-attaches through it)
    refresh: Hook = field(init=False)  # the run choices of the form and of the comparison


def build(studio, form: dict) -> EvaluateTab:
    timer = gr.Timer(IDLE_POLL_S)
    with gr.Row():
        with gr.Column(scale=2):
            run = gr.Dropdown([], label="Run", allow_custom_value=True, elem_id="eval-run")
            rows = gr.Dropdown(["eval", "train"], value="eval", allow_custom_value=True, label="Rows",
                               info="eval: the run's held-out split · train: a sample of the training rows "
                                    "(memorisation check) · or type the path of a data file")
            limit = gr.Number(0, precision=0, minimum=0, label="At most this many rows (0: all)",
                               elem_id="eval-limit")
            models = gr.CheckboxGroup(list(MODEL_CHOICES), value=list(MODEL_CHOICES), label="Models",
                                      info="gguf: every exported .gguf of the run")
            other = gr.Textbox("", label="Another chat model (folder, optional)")
            judge = gr.Textbox("", label="Judge (a chat model, optional)", elem_id="eval-judge",
                               info="Says which answer is better, fine-tuned or base, each row asked twice with the "
                                    "answers swapped (folder or hub id)")
            with gr.Row():
                metric = gr.Dropdown(list(METRICS), value="loss", allow_custom_value=True,
                                     label="Best checkpoint by")
                batch = gr.Number(8, precision=0, minimum=1, label="Batch size")
                max_new = gr.Number(0, precision=0, minimum=0, label="Max new tokens (0: the run's)",
                                    elem_id="eval-max-new")
            checks = gr.Textbox("", lines=2, label="Checks (one per line, kept with the run)",
                                placeholder="regex:^The\njson\ncontains")
            with gr.Row():
                start = gr.Button("Evaluate", variant="primary", elem_id="eval-start")
                stop = gr.Button("Stop", elem_id="eval-stop")
            notice = gr.Markdown(elem_id="eval-notice")
        with gr.Column(scale=3):
            status = gr.Markdown("No evaluation yet.", elem_id="eval-status")
            table = gr.Dataframe(EMPTY, label="Scorecard", interactive=False, elem_id="eval-scorecard")
            verdict = gr.Markdown(elem_id="eval-verdict")
            export_best = gr.Button("Export this checkpoint", elem_id="eval-export-best")
    with gr.Accordion("Answers side by side", open=False):
        with gr.Row():
            saved = gr.Dropdown([], label="Saved evaluation", elem_id="eval-saved")
            row_filter = gr.Radio(list(ROW_FILTERS), value="all", label="Rows",
                                  info="differ: the answers are not all the same · dropped: the second model "
                                       "scores a lower ROUGE-L than the first")
            first = gr.Dropdown([], label="First model")
            second = gr.Dropdown([], label="Second model")
        answers = gr.Dataframe(EMPTY, interactive=False, wrap=True, elem_id="eval-answers")
    with gr.Accordion("Compare runs", open=False):
        with gr.Row():
            compare_runs = gr.Dropdown([], multiselect=True, label="Runs", scale=4)
            compare = gr.Button("Compare", scale=1)
        with gr.Row():
            loss_plot = gr.LinePlot(EMPTY_CURVE, x="step", y="value", color="run", title="Training loss")
            eval_plot = gr.LinePlot(EMPTY_CURVE, x="step", y="value", color="run", title="Eval loss")
        differences = gr.Dataframe(EMPTY, label="Config differences", interactive=False)
        finals = gr.Dataframe(EMPTY, label="How each run ended", interactive=False)
    return EvaluateTab(timer, run, rows, limit, models, other, judge, metric, batch, max_new, checks, start, stop,
                       notice, status, table, verdict, export_best, saved, row_filter, first, second, answers,
                       compare_runs, compare, loss_plot, eval_plot, differences, finals)


def wire(studio, form: dict, tab: EvaluateTab, export: ExportTab, tabs: gr.Tabs) -> None:
    def start(run: str, rows: str, limit: float, models: list[str], other: str, judge: str, metric: str, batch: float,
              max_new: float, checks: str):
        """Inputs: the form above. Outputs: notice, the polling timer switched on."""
        spec = EvalSpec(rows=rows or "eval", limit=int(limit or 0), models=tuple(models), other=(other or "").strip(),
                        metric=metric, batch_size=int(batch or 8), max_new_tokens=int(max_new or 0),
                        judge=(judge or "").strip(),
                        checks=tuple(line.strip() for line in (checks or "").splitlines() if line.strip()))
        try:
            studio.start_evaluation(studio.find_run(run or ""), spec)
        except StudioError as exc:
            return f"⚠️ {exc}", gr.skip()
        return f"Evaluating **{Path(run).name}**…", gr.Timer(1.0)

    def stop():
        """Inputs: none. Outputs: notice."""
        studio.jobs.stop()
        return "Stopping after the current batch; what was scored is kept."

    def poll(shown: tuple):
        """Inputs: what the page shows. Outputs: status, scorecard, verdict, saved list, shown, timer."""
        return poll_outputs(studio.jobs.snapshot(), shown, evaluation_view, 4, fast_s=1.0)

    def runs():
        """Inputs: none. Outputs: the run choices of the form and of the comparison."""
        choices = [(f"{s.run_dir.name} · {s.state}", str(s.run_dir)) for s in studio.run_states()]
        return gr.update(choices=choices), gr.update(choices=choices)

    def saved(run: str):
        """Inputs: run. Outputs: its saved evaluations, the newest selected."""
        folders = [str(p) for p in list_evals(Path(run))] if run else []
        return gr.update(choices=[(Path(f).name, f) for f in folders], value=folders[-1] if folders else None)

    def show(folder: str):
        """Inputs: a saved evaluation. Outputs: scorecard, verdict, first and second model choices."""
        if not folder:
            return EMPTY, "", gr.update(choices=[]), gr.update(choices=[])
        result = load_eval(Path(folder))
        names = [m.name for m in result.scorecard.models]
        first = next((n for n in names if n == "fine-tuned"), names[0] if names else None)
        return (scorecard_frame(result.scorecard), verdict_text(result.scorecard),
                gr.update(choices=names, value=first), gr.update(choices=names, value=names[-1] if names else None))

    def export_best(folder: str):
        """Inputs: the saved evaluation shown. Outputs: the Export tab's run and checkpoint set to what its verdict
        ships, the Export tab selected."""
        from studio.export.exporting import run_checkpoints

        card = load_eval(Path(folder)).scorecard if folder else None
        best = card.model(card.best) if card is not None and card.best else None
        if best is None:
            raise gr.Error("No verdict to export yet: evaluate the run's fine-tuned model or checkpoints first.")
        run_dir = Path(folder).parent.parent
        checkpoint = best.name if best.kind == "checkpoint" else ""
        choices = [("final weights", ""), *((n, n) for n in run_checkpoints(run_dir))]
        return gr.update(value=str(run_dir)), gr.update(choices=choices, value=checkpoint), gr.Tabs(selected="export")

    def rows_view(folder: str, show_rows: str, first: str, second: str):
        """Inputs: saved evaluation, filter, first and second model. Outputs: the answers table."""
        if not folder:
            return EMPTY
        header, table = side_by_side(load_eval(Path(folder)), show_rows, first, second)
        return pd.DataFrame(table, columns=header)

    def compare(run_dirs: list[str]):
        """Inputs: runs. Outputs: loss plot, eval loss plot, config differences, finals (or a notice)."""
        from studio.evaluate.compare import compare_runs

        try:
            found = compare_runs([studio.find_run(r) for r in run_dirs or []])
        except StudioError as exc:
            raise gr.Error(str(exc)) from None
        return comparison_frames(found)

    form_inputs = [tab.run, tab.rows, tab.limit, tab.models, tab.other, tab.judge, tab.metric, tab.batch, tab.max_new,
                   tab.checks]
    tab.start.click(start, form_inputs, [tab.notice, tab.timer], api_name="start_evaluation")
    tab.stop.click(stop, None, tab.notice, api_name="stop_evaluation")
    shown = gr.State(())
    outputs = [tab.status, tab.table, tab.verdict, tab.saved, shown, tab.timer]
    tab.timer.tick(poll, shown, outputs, api_name="evaluation_snapshot", show_progress="hidden")
    tab.poll = Hook(poll, shown, outputs)
    tab.refresh = Hook(runs, None, [tab.run, tab.compare_runs])
    tab.run.change(saved, tab.run, tab.saved, api_name="saved_evaluations")
    tab.saved.change(show, tab.saved, [tab.table, tab.verdict, tab.first, tab.second], api_name="show_evaluation")
    tab.export_best.click(export_best, tab.saved, [export.run, export.checkpoint, tabs], api_name="export_best")
    viewer = [tab.saved, tab.filter, tab.first, tab.second]
    tab.filter.change(rows_view, viewer, tab.answers, api_name="show_rows")
    for control in (tab.first, tab.second):
        control.change(rows_view, viewer, tab.answers, api_visibility="private")
    tab.compare.click(compare, tab.compare_runs, [tab.loss_plot, tab.eval_plot, tab.differences, tab.finals],
                      api_name="compare_runs")


# ---------------------------------------------------------------- views


def evaluation_view(snap) -> tuple:
    """(status, scorecard frame, verdict, saved-evaluations update) for a job snapshot."""
    if snap.kind != "evaluate":
        return "No evaluation yet.", EMPTY, "", gr.skip()
    result = snap.result
    card = result.scorecard if result is not None else _card_so_far(snap.events)
    head = {"running": "⏳ Evaluating", "completed": "✅ Done", "stopped": "⏸️ Stopped (partial results kept)",
            "failed": "⛔ Failed"}.get(snap.state, snap.state)
    status = f"{head} **{snap.name}**"
    progress = [e for e in snap.events if e.kind in ("log", "stage")]
    if snap.state == "running" and progress:
        status += f" · {progress[-1].message}"
    if snap.error:
        status += f"\n\n⚠️ {snap.error}"
    saved = gr.skip()
    if result is not None:
        folders = [str(p) for p in list_evals(result.folder.parent.parent)]
        saved = gr.update(choices=[(Path(f).name, f) for f in folders], value=str(result.folder))
    return status, scorecard_frame(card), verdict_text(card), saved


def _card_so_far(events) -> Scorecard:
    stages = [e for e in events if e.kind == "stage"]
    metric = next((e.extra["metric"] for e in stages if "metric" in e.extra), "loss")
    models = [ModelRow(**e.extra["model"]) for e in stages if "model" in e.extra]
    return build_scorecard(models, metric, partial=True) if models else Scorecard(metric, [])


def scorecard_frame(card: Scorecard) -> pd.DataFrame:
    header, rows = table_rows(card)
    return pd.DataFrame(rows, columns=header) if rows else EMPTY


def verdict_text(card: Scorecard) -> str:
    lines = [f"- ✅ {v}" for v in card.verdict] + [f"- ⚠️ {w}" for w in card.warnings]
    return "\n".join(lines)


def comparison_frames(found) -> tuple:
    curves = pd.DataFrame(found.curves, columns=["run", "step", "series", "value"])
    loss, evals = (curves[curves.series == s][["step", "value", "run"]] for s in ("loss", "eval loss"))
    differences = pd.DataFrame([[k, *v] for k, v in found.differences.items()], columns=["setting", *found.runs])
    return loss, (evals if len(evals) else EMPTY_CURVE), differences, pd.DataFrame(found.finals)
