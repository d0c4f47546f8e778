"""Turn a job snapshot into what the Train and Export tabs show: text, a progress bar, plot frames."""

from __future__ import annotations

import math
import time

import gradio as gr
import pandas as pd

from studio.events import Event

NON_FINITE = "not a number"
IDLE_POLL_S = 3.0  # seconds between polls while no job runs
PLOT_EVERY_S = 5.0  # seconds between chart redraws while a job runs (text updates at every step)

EMPTY_CURVE = pd.DataFrame({"step": [], "value": [], "series": []})
EMPTY_MEMORY = pd.DataFrame({"seconds": [], "GiB": [], "series": []})


def poll_outputs(snap, shown: tuple, render, outputs: int, fast_s: float, plots: tuple[int, ...] = ()) -> tuple:
    """Outputs of a polling tick: the rendered snapshot, with gr.skip() wherever nothing needs redrawing.

    Ends with the new "shown" state and the timer: fast while a job runs, slow when idle
    (an idle page then costs next to nothing, yet notices a job started from another browser).
    While a job runs, the outputs at `plots` are redrawn at most every PLOT_EVERY_S: drawing
    charts is the browser's heaviest work, and on a CPU machine it competes with training.
    """
    key = (snap.name, snap.state, len(snap.events))
    last_key, last_plot = (tuple(shown[:3]), shown[3]) if shown else ((), 0.0)
    timer = gr.Timer(fast_s if snap.running else IDLE_POLL_S)
    if key == last_key:
        return (*[gr.skip()] * outputs, shown, timer)
    values = list(render(snap))
    now = time.time()
    if snap.running and now - last_plot < PLOT_EVERY_S:
        for index in plots:
            values[index] = gr.skip()
    else:
        last_plot = now
    return (*values, (*key, last_plot), timer)


def progress_bar(step: int, total: int) -> str:
    percent = 100 * step / total if total else 0
    return (f'<div class="progress"><div class="progress-fill" style="width:{percent:.1f}%"></div>'
            f'<span>{step}/{total or "?"} steps</span></div>')


# Series colours: a non-finite value is a red mark across the plot, never a point at 0.
CURVE_COLORS = {"loss": "#10b981", "eval loss": "#3b82f6", "lr x1000": "#a855f7", "grad norm": "#f59e0b",
                NON_FINITE: "#dc2626"}
STATE_HEAD = {"running": "⏳ Training", "completed": "✅ Completed", "stopped": "⏸️ Stopped", "failed": "⛔ Failed",
              "diverged": "🛑 Diverged", "interrupted": "⛔ Interrupted"}


def training_view(snap) -> tuple:
    """(status, progress html, loss frame, lr/grad frame, memory text, memory frame) for a snapshot."""
    if snap.kind != "train":
        return "No training yet.", progress_bar(0, 0), EMPTY_CURVE, EMPTY_CURVE, "", EMPTY_MEMORY
    logs = [e for e in snap.events if e.kind == "log"]
    evals = [e for e in snap.events if e.kind == "eval"]
    last = logs[-1] if logs else None
    return (_status(snap, last), progress_bar(last.step if last else 0, last.max_steps if last else 0),
            _curves(logs, evals), _lr_grad(logs), _memory_text(last), _memory_frame(logs, snap.started_at))


def _status(snap, last: Event | None) -> str:
    state = getattr(snap.result, "state", None) or snap.state
    warnings = [e.message for e in snap.events if e.kind == "warning"]
    head = STATE_HEAD.get(state, state)
    if state == "completed" and warnings:
        head = f"⚠️ Completed with {len(warnings)} warning{'s' * (len(warnings) > 1)}"
    text = f"{head} **{snap.name}**"
    if last is not None:
        text += f" · step {last.step}/{last.max_steps} · loss {_number(last.loss)}"
        if last.tokens_per_second:
            text += f" · {last.tokens_per_second:,.0f} tokens/s"
        if snap.state == "running" and last.eta_s is not None:
            text += f" · ETA {int(last.eta_s) // 60}m{int(last.eta_s) % 60:02d}s"
    else:
        stages = [e.message for e in snap.events if e.kind == "stage"]
        text += f" · {stages[-1]}" if stages else ""
    for warning in warnings[-3:]:
        text += f"\n\n⚠️ {warning}"
    text += _samples(last)
    ends = [e for e in snap.events if e.kind == "end"]
    health = ends[-1].extra.get("health") if ends else getattr(snap.result, "health", "")
    if health:
        text += f"\n\n**Health** · {health}"
    if snap.error:
        text += f"\n\n⚠️ {snap.error}"
    return text


def _samples(last: Event | None) -> str:
    """grpo: a few of the latest step's completions with their rewards, as a small table."""
    samples = last.extra.get("samples") if last is not None else None
    if not samples:
        return ""
    rows = "\n".join(f"| {s['reward']:.2f} | {_cell(s['completion'])} |" for s in samples)
    return f"\n\n**Latest completions** (step {last.step})\n\n| reward | completion |\n|---|---|\n{rows}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ↵ ") or "*(empty)*"


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if math.isfinite(value) else f"**{value}** (not a number)"


def _curves(logs: list[Event], evals: list[Event]) -> pd.DataFrame:
    rows = _series([(e.step, e.loss) for e in logs], "loss") + _series([(e.step, e.eval_loss) for e in evals], "eval loss")
    return _frame(rows)


def _lr_grad(logs: list[Event]) -> pd.DataFrame:
    # Learning rate is scaled x1000 to share the axis with grad norm; the legend says so.
    rows = _series([(e.step, e.learning_rate * 1000) for e in logs if e.learning_rate is not None], "lr x1000")
    rows += _series([(e.step, e.grad_norm) for e in logs if e.grad_norm is not None], "grad norm")
    return _frame(rows)


def method_curves(snap) -> pd.DataFrame:
    """The method's own logged values (dpo's rewards and margins, kto's KL ...), one series each."""
    if snap.kind != "train":
        return EMPTY_CURVE
    rows: list[tuple] = []
    for event in snap.events:
        if event.kind == "log":
            for name, value in event.extra.get("metrics", {}).items():
                rows += _series([(event.step, value)], name)
    return _frame(rows)


def _series(points: list[tuple[int, float]], name: str) -> list[tuple]:
    """Rows of one curve; a non-finite value leaves a gap in it (an empty value breaks the line)."""
    return [(step, value if math.isfinite(value) else None, name) for step, value in points]


def _frame(rows: list[tuple]) -> pd.DataFrame:
    """The plot's frame, with a red vertical mark over the plotted range at every non-finite step."""
    if not rows:
        return EMPTY_CURVE
    finite = [value for _, value, _ in rows if value is not None]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    for step in sorted({step for step, value, _ in rows if value is None}):
        # Two points make a vertical segment; the empty point after it keeps marks apart.
        rows += [(step, low, NON_FINITE), (step, high, NON_FINITE), (step + 0.5, None, NON_FINITE)]
    return pd.DataFrame(rows, columns=["step", "value", "series"])


def _memory_text(last: Event | None) -> str:
    if last is None or not last.memory:
        return ""
    m = last.memory
    parts = []
    if m.get("gpu_allocated") is not None:
        parts.append(f"**GPU (torch)** allocated {m['gpu_allocated']:.2f} · reserved {m['gpu_reserved']:.2f} · "
                     f"peak {m['gpu_peak']:.2f} GiB")
    if m.get("gpu_total") is not None:
        parts.append(f"**GPU (NVML)** used {m['gpu_used']:.2f} / {m['gpu_total']:.1f} GiB · "
                     f"{m['gpu_util_percent']:.0f}% busy · {m['gpu_temp_c']:.0f} °C")
    parts.append(f"**RAM** process {m['process_rss']:.2f} GiB · system {m['ram_used']:.1f} / {m['ram_total']:.1f} GiB")
    for rank, device in enumerate(m.get("devices") or ()):
        if device.get("gpu_allocated") is not None:
            parts.append(f"**Process {rank}** GPU allocated {device['gpu_allocated']:.2f} · peak "
                         f"{device['gpu_peak']:.2f} GiB" + (f" · {device['gpu_used']:.2f} / {device['gpu_total']:.1f} "
                                                             "GiB used (NVML)" if device.get("gpu_total") else ""))
        else:
            parts.append(f"**Process {rank}** RAM {device['process_rss']:.2f} GiB")
    return "  \n".join(parts)


def _memory_frame(logs: list[Event], started: float | None) -> pd.DataFrame:
    rows = []
    for e in logs:
        seconds = round(e.time - (started or e.time), 1)
        devices = e.memory.get("devices")
        if devices:  # several processes: each one's GPU (or RAM) as its own line
            rows += [(seconds, d["gpu_allocated"], f"GPU {rank} allocated") if d.get("gpu_allocated") is not None
                     else (seconds, d["process_rss"], f"process {rank} RAM") for rank, d in enumerate(devices)]
            continue
        if e.memory.get("gpu_allocated") is not None:
            rows += [(seconds, e.memory["gpu_allocated"], "GPU allocated"), (seconds, e.memory["gpu_reserved"], "GPU reserved")]
        rows.append((seconds, e.memory["process_rss"], "process RAM"))
    return pd.DataFrame(rows, columns=["seconds", "GiB", "series"]) if rows else EMPTY_MEMORY
