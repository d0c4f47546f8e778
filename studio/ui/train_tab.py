"""Train tab: method and hyper-parameters, Start / Stop / Resume, live curves and memory.

The page polls the job's snapshot twice a second while it runs (every 3 s when idle), so a reload simply
re-attaches to whatever is running.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gradio as gr

from studio.config import RunConfig
from studio.recipes import recipe_text
from studio.errors import StudioError
from studio.ui import live
from studio.ui.controls import control, more_settings
from studio.ui.form import config_from_form, form_values, named
from studio.train.methods import settings_sections
from studio.ui.hook import Hook


@dataclass
class TrainTab:
    recipe: gr.Dropdown
    start: gr.Button
    stop: gr.Button
    resume_run: gr.Dropdown
    train_to: gr.Number
    resume: gr.Button
    show: gr.Button
    save: gr.Button
    command: gr.Code
    notice: gr.Markdown
    status: gr.Markdown
    progress: gr.HTML
    loss: gr.LinePlot
    lr: gr.LinePlot
    memory: gr.Markdown
    memory_plot: gr.LinePlot
    method_plot: gr.LinePlot
    method_settings: dict[str, gr.Group]  # config section -> its group, shown for the methods that use it
    timer: gr.Timer
    poll: Hook = field(init=False)  # draws the job's snapshot (a reload re-attaches through it)
    restore: Hook = field(init=False)  # after a reload, the form shows the running job's settings
    refresh: Hook = field(init=False)  # the runs that can be resumed


def build(studio, form: dict, start: RunConfig) -> TrainTab:
    """The Train tab, its form controls showing `start` (the quickstart recipe, or a recipe picked here)."""
    with gr.Row():
        with gr.Column(scale=2):
            recipe = gr.Dropdown(studio.recipe_choices(), value=None, label="Load a recipe into the form",
                                 elem_id="recipe-picker", info="Every tab's settings are set from the recipe.")
            form["name"] = control("name", start, elem_id="run-name")
            with gr.Row():
                form["train.method"] = control("train.method", start)
                form["lora.enabled"] = control("lora.enabled", start)
            with gr.Row():
                form["lora.r"] = control("lora.r", start)
                form["lora.alpha"] = control("lora.alpha", start)
            with gr.Row():
                form["train.max_steps"] = control("train.max_steps", start, elem_id="max-steps")
                form["train.batch_size"] = control("train.batch_size", start)
                form["train.grad_accum"] = control("train.grad_accum", start)
            with gr.Row():
                form["train.learning_rate"] = control("train.learning_rate", start, elem_id="learning-rate")
                form["train.max_length"] = control("train.max_length", start)
            with gr.Row():
                form["train.devices"] = control("train.devices", start, elem_id="train-devices")
                form["train.parallel"] = control("train.parallel", start)
            method_settings = {}
            for section, methods in settings_sections().items():
                with gr.Group(visible=start.train.method in methods) as group:
                    gr.Markdown(f"**{', '.join(methods)} settings**")
                    more_settings(form, start, (section,))
                method_settings[section] = group
            with gr.Accordion("Advanced: every other training, chat and export setting of the recipe", open=False):
                more_settings(form, start, ("train", "lora", "generation", "export"))
            with gr.Row():
                start = gr.Button("Start", variant="primary", elem_id="train-start")
                stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
            with gr.Row():
                resume_run = gr.Dropdown([], label="Resume run", allow_custom_value=True, scale=3, elem_id="resume-run")
                train_to = gr.Number(0, precision=0, label="Train to step", scale=1, elem_id="train-to",
                                     info="0: as planned. A finished run continues only to a higher step.")
                resume = gr.Button("Resume", scale=1)
            with gr.Row():
                show = gr.Button("Show command", size="sm")
                save = gr.Button("Save recipe", size="sm")
            notice = gr.Markdown(elem_id="train-notice")
            command = gr.Code(label="Headless twin", language="yaml", visible=True, elem_id="train-command")
        with gr.Column(scale=3):
            status = gr.Markdown("No training yet.", elem_id="train-status")
            progress = gr.HTML(live.progress_bar(0, 0), elem_id="train-progress")
            with gr.Row():
                loss = gr.LinePlot(x="step", y="value", color="series", title="Loss", height=240, elem_id="loss-plot",
                                   color_map=live.CURVE_COLORS)
                lr = gr.LinePlot(x="step", y="value", color="series", title="Learning rate · grad norm", height=240,
                                 color_map=live.CURVE_COLORS)
            method_plot = gr.LinePlot(x="step", y="value", color="series", title="The method's own values: rewards, "
                                      "margins, KL", height=240, elem_id="method-plot", visible=False)
            memory = gr.Markdown(elem_id="memory-panel")
            memory_plot = gr.LinePlot(x="seconds", y="GiB", color="series", title="Memory", height=200,
                                      elem_id="memory-plot")
    return TrainTab(recipe, start, stop, resume_run, train_to, resume, show, save, command, notice, status, progress, loss,
                    lr, memory, memory_plot, method_plot, method_settings, gr.Timer(live.IDLE_POLL_S))


def wire(studio, form: dict, tab: TrainTab) -> None:
    keys, inputs = list(form), list(form.values())

    def start(*values):
        """Inputs: the run form. Outputs: notice, the polling timer switched on."""
        try:
            run_dir = studio.start_training(config_from_form(keys, values))
        except StudioError as exc:
            return f"⚠️ {exc}", gr.skip()
        return f"Started **{run_dir.name}**", gr.Timer(0.5)

    def stop():
        """Inputs: none. Outputs: status line."""
        if studio.jobs.snapshot().kind != "train" or not studio.jobs.busy:
            return "No training is running."
        studio.jobs.stop()
        return "Stopping after the current step (a checkpoint is saved)…"

    def resume(run: str, train_to: float):
        """Inputs: a run folder, the step to train to (0: as planned). Outputs: notice, the polling timer switched on."""
        changes = (f"train.max_steps={int(train_to)}",) if train_to and train_to > 0 else ()
        try:
            studio.resume_training(studio.find_run(run), changes)
        except StudioError as exc:
            return f"⚠️ {exc}", gr.skip()
        return f"Resuming **{run}**", gr.Timer(0.5)

    def command(*values):
        """Inputs: the run form. Outputs: the recipe and the command that runs it headless."""
        try:
            cfg = config_from_form(keys, values)
            path = studio.recipe_path(cfg)
        except StudioError as exc:
            return f"# {exc}"
        return f"# python launch.py train {path}\n{recipe_text(cfg)}"

    def save(*values):
        """Inputs: the run form. Outputs: where the recipe was written."""
        try:
            path = studio.save_recipe(config_from_form(keys, values))
        except StudioError as exc:
            return f"⚠️ {exc}"
        return f"Saved **{path}** · run it with `python launch.py train {path}`"

    def poll(shown: tuple):
        """Inputs: what the page shows. Outputs: status, progress, loss, lr, memory text, memory plot, method plot,
        Start, shown, timer."""
        return live.poll_outputs(studio.jobs.snapshot(), shown, view, 8, fast_s=0.5, plots=(2, 3, 5, 6))

    def view(snap) -> tuple:
        curves = live.method_curves(snap)
        # Start is disabled while a job runs: one GPU job at a time.
        return (*live.training_view(snap), gr.update(value=curves, visible=not curves.empty),
                gr.update(interactive=not snap.running))

    def show_method_settings(method: str):
        """Inputs: the method. Outputs: each method settings group, shown when the method uses it."""
        return tuple(gr.update(visible=method in methods) for methods in settings_sections().values())

    def restore():
        """Inputs: none. Outputs: every form control, Start. After a reload, the form shows the running job's settings."""
        snap = studio.jobs.snapshot()
        if not (snap.running and snap.kind == "train"):
            return (*[gr.skip()] * len(keys), gr.update(interactive=True))
        cfg = studio.run_config(snap.name)
        return (*form_values(keys, cfg), gr.update(interactive=False))

    def load(recipe: str):
        """Inputs: a recipe file. Outputs: every form control set from it, a notice."""
        try:
            cfg = studio.load_recipe(recipe)
        except StudioError as exc:
            return (*[gr.skip()] * len(keys), f"⚠️ {exc}")
        return (*form_values(keys, cfg), f"Loaded **{recipe}** into the form.")

    def runs():
        """Inputs: none. Outputs: the runs that can be resumed, each with its state."""
        return gr.update(choices=[(f"{state.run_dir.name} · {state.state}", str(state.run_dir))
                                  for state in studio.run_states()])

    named(start, keys)
    named(command, keys)
    named(save, keys)
    tab.start.click(start, inputs, [tab.notice, tab.timer], api_name="start_training")
    tab.stop.click(stop, None, tab.notice, api_name="stop_training")
    tab.resume.click(resume, [tab.resume_run, tab.train_to], [tab.notice, tab.timer], api_name="resume_training")
    tab.show.click(command, inputs, tab.command, api_name="show_command")
    tab.save.click(save, inputs, tab.notice, api_name="save_recipe")
    shown = gr.State(())
    outputs = [tab.status, tab.progress, tab.loss, tab.lr, tab.memory, tab.memory_plot, tab.method_plot, tab.start,
               shown, tab.timer]
    form["train.method"].change(show_method_settings, form["train.method"], list(tab.method_settings.values()),
                                api_visibility="private")
    tab.timer.tick(poll, shown, outputs, api_name="training_snapshot", show_progress="hidden")
    tab.poll = Hook(poll, shown, outputs)
    tab.restore = Hook(restore, None, [*inputs, tab.start])
    tab.recipe.input(load, tab.recipe, [*inputs, tab.notice], api_name="load_recipe")
    tab.refresh = Hook(runs, None, [tab.resume_run])
