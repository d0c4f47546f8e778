"""Run folders: everything about one training run, in one place.

    runs/<YYYYmmdd-HHMMSS>_<name>/
        config.yaml      the fully resolved config
        template.jinja   the prompt template used (chat and export use it too)
        events.jsonl     progress events, appended on resume
        status.json      state: running / completed / stopped / failed
        checkpoints/     trainer checkpoints (resume starts from the newest whole one)
        adapter/         the final LoRA adapter and tokenizer  (or model/ for full fine-tuning)
        exports/         merged weights, GGUF files and their reports
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from studio.config import RunConfig, load_recipe, save_config
from studio.errors import RunNotFoundError
from studio.templates import Template, template_from_text


def create_run_dir(cfg: RunConfig) -> Path:
    """Make a new, uniquely named run folder and store the resolved config in it."""
    safe_name = re.sub(r"[^A-Za-z0-9_.-]+", "-", cfg.name).strip("-") or "run"
    base = Path(cfg.train.runs_dir) / f"{time.strftime('%Y%m%d-%H%M%S')}_{safe_name}"
    run_dir, n = base, 1
    while run_dir.exists():
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    (run_dir / "checkpoints").mkdir(parents=True)
    save_config(cfg, run_dir / "config.yaml")
    return run_dir


def find_run(name_or_path: str | Path, runs_dir: str | Path = "runs") -> Path:
    """A run folder from its path or its name (the newest run whose folder name ends with it)."""
    path = Path(name_or_path)
    if (path / "config.yaml").is_file():
        return path
    candidates = sorted(Path(runs_dir).glob(f"*{path.name}*/config.yaml")) if Path(runs_dir).is_dir() else []
    if candidates:
        return candidates[-1].parent
    raise RunNotFoundError(
        f"No run found at {name_or_path!r}. Give a run folder (runs/<time>_<name>) or run name; "
        f"runs are listed with `python launch.py runs`."
    )


def list_runs(runs_dir: str | Path = "runs") -> list[Path]:
    root = Path(runs_dir)
    return sorted(p.parent for p in root.glob("*/config.yaml")) if root.is_dir() else []


def load_run_config(run_dir: Path) -> RunConfig:
    return load_recipe(run_dir / "config.yaml")


def write_status(run_dir: Path, **fields) -> None:
    """Update status.json atomically (a crash never leaves half a file)."""
    status = read_status(run_dir)
    status.update(fields, updated=time.time())
    tmp = run_dir / "status.json.tmp"
    tmp.write_text(json.dumps(status, indent=2), encoding="utf-8")
    os.replace(tmp, run_dir / "status.json")


def read_status(run_dir: Path) -> dict:
    path = run_dir / "status.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint that was written completely (trainer state saved last)."""
    complete = [
        p
        for p in (run_dir / "checkpoints").glob("checkpoint-*")
        if (p / "trainer_state.json").is_file() and (p / "optimizer.pt").is_file()
    ]
    return max(complete, key=lambda p: int(p.name.split("-")[-1]), default=None)


def read_template(run_dir: Path) -> Template:
    """The template the run was trained with (chat and export must use the same one)."""
    path = run_dir / "template.jinja"
    if not path.is_file():
        raise RunNotFoundError(f"{run_dir} has no template.jinja: it never got as far as loading its data.")
    return template_from_text(path.read_text(encoding="utf-8"), "run")


def weights_dir(run_dir: Path) -> Path:
    """Where the trained result lives: adapter/ for LoRA runs, model/ for full fine-tuning."""
    for name in ("adapter", "model"):
        if (run_dir / name).is_dir():
            return run_dir / name
    raise RunNotFoundError(f"{run_dir} has no trained weights yet (no adapter/ or model/). Train or resume it first.")
