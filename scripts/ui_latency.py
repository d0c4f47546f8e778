"""Measure the studio UI: delay from a training step to its numbers on screen, and the cost of the open page.

Trains the same run twice: once headless, once started from the Train tab with
the page open in headless Chromium (which polls while training runs). Reports
the median seconds per step of both, and for every step the delay between the
trainer's log event and the moment the page shows that step.

With --client, a gradio client polls the Train tab's endpoint as the page's timer
does, instead of a browser: the studio's own cost of an open page, for machines
without Chromium (a GPU machine with the browser elsewhere).

Run as:  python scripts/ui_latency.py [--client] [MODEL] [STEPS] [KEY=VALUE ...]
         (default: builtin:gemma-3-270m 20; KEY=VALUE: config overrides for both runs, e.g. train.batch_size=4)
The result goes to results/ui_latency-DEVICE[-client].json, or to $OUT when that is set (a GPU machine).
"""

import json
import os
import re
import shutil
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


OVERRIDES: list[str] = []  # KEY=VALUE from the command line


def config(model: str, steps: int):
    from studio.recipes import load_recipe

    return load_recipe(ROOT / "recipes" / "quickstart.yaml",
                       [f"model.name_or_path={model}", f"train.max_steps={steps}", "train.save_steps=1000",
                        "name=latency", *OVERRIDES])


def seconds_per_step(run_dir: Path) -> float:
    from studio.events import read_events

    logs = [e for e in read_events(run_dir / "events.jsonl") if e.kind == "log"]
    gaps = [b.time - a.time for a, b in zip(logs[1:], logs[2:])]  # skip the first (warm-up) step
    return statistics.median(gaps)


def headless(model: str, steps: int, runs: Path) -> Path:
    from studio.events import JsonlSink
    from studio.runs import create_run_dir
    from studio.train.training import run_training

    run_dir = create_run_dir(config(model, steps), runs)
    run_training(run_dir, JsonlSink(run_dir / "events.jsonl"), threading.Event())
    return run_dir


def with_page(model: str, steps: int, runs: Path) -> tuple[Path, list[float]]:
    from playwright.sync_api import sync_playwright

    from studio.services import Studio
    from studio.ui.app import serve

    port = _free_port()
    studio = Studio(runs_dir=runs)
    app = serve(studio, port=port, block=False)
    seen: dict[int, float] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=FLAGS)
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        page.get_by_role("tab", name="Train").click()
        # The page itself notes when each step appears (no polling from here that would load the CPU).
        page.evaluate("""() => { window.seen = {};
            new MutationObserver(() => {
                const m = document.querySelector('#train-status').innerText.match(/ · step (\\d+)\\//);
                if (m && !(m[1] in window.seen)) window.seen[m[1]] = Date.now() / 1000;
            }).observe(document.querySelector('#train-status'), {subtree: true, childList: true, characterData: true}); }""")
        browser_processes = [p for p in psutil.process_iter() if "chrom" in p.name()]
        cpu_before = _cpu_seconds(browser_processes)
        run_dir = studio.start_training(config(model, steps))
        while studio.jobs.busy:
            time.sleep(0.5)
        browser_cpu = _cpu_seconds(browser_processes) - cpu_before
        seen = {int(k): v for k, v in page.evaluate("() => window.seen").items()}
        browser.close()
    app.close()
    return run_dir, _delays(run_dir, seen), browser_cpu


def with_client(model: str, steps: int, runs: Path) -> tuple[Path, list[float], float]:
    import multiprocessing

    from studio.services import Studio
    from studio.ui.app import serve

    port = _free_port()
    studio = Studio(runs_dir=runs)
    app = serve(studio, port=port, block=False)
    # The client polls from a process of its own, as a browser would: its work stays out of the studio's.
    context = multiprocessing.get_context("spawn")
    stop, answers = context.Event(), context.Queue()
    poller = context.Process(target=_poll, args=(f"http://127.0.0.1:{port}/", stop, answers))
    poller.start()
    run_dir = studio.start_training(config(model, steps))
    while studio.jobs.busy:
        time.sleep(0.5)
    poller_cpu = _cpu_seconds([psutil.Process(poller.pid)])
    stop.set()
    seen = answers.get(timeout=60)
    poller.join(timeout=30)
    app.close()
    return run_dir, _delays(run_dir, seen), poller_cpu


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _delays(run_dir: Path, seen: dict[int, float]) -> list[float]:
    """For each step seen on screen: seconds from the trainer's log event to the moment it showed."""
    from studio.events import read_events

    logged = {e.step: e.time for e in read_events(run_dir / "events.jsonl") if e.kind == "log"}
    return [seen[s] - logged[s] for s in sorted(seen) if s in logged]


POLL_WHILE_TRAINING_S = 0.5  # the Train tab's timer while a job runs (studio.ui.train_tab: fast_s)


def _poll(url: str, stop, answers) -> None:
    """The Train tab's polling, from another process: when each step first shows in its status line."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    seen: dict[int, float] = {}
    while not stop.is_set():
        status = client.predict(api_name="/training_snapshot")[0]
        found = re.search(r" · step (\d+)/", status) if isinstance(status, str) else None
        if found and int(found[1]) not in seen:
            seen[int(found[1])] = time.time()
        time.sleep(POLL_WHILE_TRAINING_S)
    answers.put(seen)


def _cpu_seconds(processes) -> float:
    total = 0.0
    for p in processes:
        try:
            times = p.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def main() -> None:
    import torch

    client = "--client" in sys.argv
    args = [a for a in sys.argv[1:] if a != "--client" and "=" not in a]
    OVERRIDES.extend(a for a in sys.argv[1:] if "=" in a)
    model = args[0] if args else "builtin:gemma-3-270m"
    steps = int(args[1]) if len(args) > 1 else 20
    runs = Path("/tmp/ui_latency_runs")
    shutil.rmtree(runs, ignore_errors=True)
    headless_run = headless(model, steps, runs)
    page_run, delays, browser_cpu = (with_client if client else with_page)(model, steps, runs)
    result = {
        "model": model, "steps": steps, "overrides": OVERRIDES,
        "page": "gradio client" if client else "headless Chromium",
        "headless_s_per_step": round(seconds_per_step(headless_run), 3),
        "page_open_s_per_step": round(seconds_per_step(page_run), 3),
        "delay_median_s": round(statistics.median(delays), 3), "delay_max_s": round(max(delays), 3),
        "steps_seen_on_screen": len(delays),
        "page_cpu_s_per_step": round(browser_cpu / steps, 3),  # the browser's, or the polling client's
    }
    result["slowdown_percent"] = round(100 * (result["page_open_s_per_step"] / result["headless_s_per_step"] - 1), 1)
    device = torch.cuda.get_device_name(0).replace(" ", "-") if torch.cuda.is_available() else "cpu"
    out = Path(os.environ.get("OUT") or ROOT / "results") / f"ui_latency-{device}{'-client' if client else ''}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
