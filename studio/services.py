"""The one services object the studio builds at start and hands to every tab.

It owns the GPU arbiter (one job at a time), the chat models, and the memory
probe. Every method is a plain call on the headless core, so the UI and tests
drive the same code:

    studio = Studio(runs_dir=Path("runs"))
    run_dir = studio.start_training(cfg)
    studio.jobs.snapshot()
    studio.stream_pane("tuned", str(run_dir), None, None, messages, ReplySettings(max_new_tokens=64))
"""

from __future__ import annotations

import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from studio.chat.panes import ChatPanes, ReplySettings
from studio.config import RunConfig
from studio.errors import BusyError, ConfigError, RunNotFoundError
from studio.events import JsonlSink, fan_out
from studio.hardware import GIB, MemoryProbe, device_name, has_cuda
from studio.jobs import JobRunner


class GpuArbiter:
    """One owner of the GPU at a time: a job (training, export) or a chat reply (its model load included).

    A job holds it from before its weights load until it ends, from its own
    thread; a chat reply holds it while it loads and generates. A reply waits a
    moment for another reply, never for a job: then the answer is "Busy".
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.holder = ""

    def claim(self, holder: str, wait: float = 0.0) -> None:
        """Take the GPU, waiting at most `wait` seconds for its holder; BusyError naming the holder otherwise."""
        taken = self._lock.acquire(timeout=wait) if wait else self._lock.acquire(blocking=False)
        if not taken:
            raise BusyError(f"Busy: the GPU is in use ({self.holder}). Wait for it or stop it first.")
        self.holder = holder

    def release(self) -> None:
        self.holder = ""
        self._lock.release()

    @contextmanager
    def held(self, holder: str, wait: float = 0.0) -> Iterator[None]:
        self.claim(holder, wait)
        try:
            yield
        finally:
            self.release()


def recipe_file_stem(name: str) -> str:
    """A run name as a file name inside the recipes folder: no folders, no way out of it."""
    if not name.strip() or any(sep in name for sep in "/\\") or name.startswith(".") or ":" in name:
        raise ConfigError(
            f"The run name {name!r} cannot name a recipe file: use letters, digits, '-', '_' and '.' "
            "(no '/', '\\' or ':', not starting with '.'). Recipes are saved in the studio's recipes folder.")
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name.strip()).strip("-") or "recipe"


QUICKSTART = Path(__file__).resolve().parent.parent / "recipes" / "quickstart.yaml"


@dataclass
class Studio:
    runs_dir: Path = Path("runs")
    recipes_dir: Path = Path("my_recipes")  # "Save recipe" writes here and nowhere else
    jobs: JobRunner = field(default_factory=JobRunner)
    probe: MemoryProbe = field(default_factory=MemoryProbe)
    # Set to end a streaming reply: by the Stop button, and by any job that needs the GPU.
    chat_stop: threading.Event = field(default_factory=threading.Event)
    gpu: GpuArbiter = field(default_factory=GpuArbiter)
    chat: ChatPanes = field(init=False)  # what the chat panes have loaded

    def __post_init__(self) -> None:
        self.runs_dir = Path(self.runs_dir)
        self.chat = ChatPanes(self.runs_dir)

    # ------------------------------------------------------------ hardware

    def hardware(self) -> dict:
        """Device name and the memory a run may use (GiB)."""
        import torch

        snap = self.probe.snapshot()
        if has_cuda():
            free, total = torch.cuda.mem_get_info()
            gpus = [(i, torch.cuda.get_device_name(i), torch.cuda.get_device_properties(i).total_memory / GIB)
                    for i in range(torch.cuda.device_count())]
            return {"device": device_name(), "gpu": True, "available_gib": free / GIB, "total_gib": total / GIB,
                    "ram_total_gib": snap.ram_total, "gpus": gpus}
        return {"device": "CPU only", "gpu": False, "available_gib": snap.ram_total - snap.ram_used,
                "total_gib": snap.ram_total, "ram_total_gib": snap.ram_total, "gpus": []}

    def preview_data(self, cfg: RunConfig, row: int):
        """The Data tab's preview of `cfg.data` with the model's tokenizer and the chosen template."""
        from studio.models import load_tokenizer
        from studio.data.preview import preview_dataset
        from studio.data.templates import resolve_template
        from studio.train.methods import method_for

        tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code)
        template = resolve_template(cfg.data.template, tokenizer)
        method = method_for(cfg.train.method)
        return preview_dataset(cfg.data, tokenizer, template, cfg.train.max_length, row, method.shape, method.name)

    def list_runs(self) -> list[Path]:
        from studio.runs import list_runs

        return list_runs(self.runs_dir)

    def start_config(self) -> RunConfig:
        """What the studio's form shows at first: the quickstart recipe."""
        from studio.recipes import load_recipe

        return load_recipe(QUICKSTART)

    def recipe_choices(self) -> list[str]:
        """The documented recipes and the ones saved from the studio."""
        return [str(p) for folder in (QUICKSTART.parent, self.recipes_dir) if folder.is_dir()
                for p in sorted(folder.rglob("*.yaml"))]

    def load_recipe(self, path: str) -> RunConfig:
        """A recipe for the form: only those listed by recipe_choices (the API reads no other file)."""
        from studio.recipes import load_recipe

        if path not in self.recipe_choices():
            raise ConfigError(f"{path} is not one of the studio's recipes ({QUICKSTART.parent}/, {self.recipes_dir}/).")
        return load_recipe(path)

    def run_states(self) -> list:
        """Every run with its true state (a run whose process died reads "interrupted")."""
        from studio.runs import list_runs, run_state

        return [run_state(run_dir) for run_dir in list_runs(self.runs_dir)]

    def run_config(self, run: str) -> RunConfig:
        from studio.runs import load_run_config

        return load_run_config(self.find_run(run))

    def find_run(self, run: str) -> Path:
        """A run of this studio's runs folder, by path or name: exports and resumes write only there."""
        from studio.runs import find_run

        run_dir = find_run(run, self.runs_dir)
        if not run_dir.resolve().is_relative_to(self.runs_dir.resolve()):
            raise RunNotFoundError(
                f"{run} is not in this studio's runs folder ({self.runs_dir}). Open the studio with --runs-dir "
                "set to its folder, or use `python launch.py export` / `resume` for it.")
        return run_dir

    def recipe_path(self, cfg: RunConfig) -> Path:
        """Where "Save recipe" writes `cfg`: <recipes_dir>/<run name>.yaml, the name cleaned."""
        return self.recipes_dir / f"{recipe_file_stem(cfg.name)}.yaml"

    def save_recipe(self, cfg: RunConfig) -> Path:
        """Write `cfg` as `<recipes_dir>/<run name>.yaml`; the name cannot lead anywhere else."""
        from studio.recipes import recipe_text

        path = self.recipe_path(cfg)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# Saved from the studio.\n# Run: python launch.py train {path}\n{recipe_text(cfg)}", encoding="utf-8")
        return path

    # ------------------------------------------------------------ jobs

    def start_training(self, cfg: RunConfig) -> Path:
        """Create the run folder and train in the background (ends any chat reply and frees the chat models)."""
        from studio.runs import create_run_dir
        from studio.train.placement import plan_placement
        from studio.train.training import run_training

        plan_placement(cfg)  # devices this machine lacks are refused before a run folder is made
        self._take_gpu_for("training")
        try:
            run_dir = create_run_dir(cfg, self.runs_dir)
            log = JsonlSink(run_dir / "events.jsonl")
            self._run_job("train", run_dir.name, lambda sink, stop: run_training(
                run_dir, fan_out(log, sink), stop, gpu_in_child=True))
        except BaseException:
            self.gpu.release()
            raise
        return run_dir

    def resume_training(self, run_dir: Path, changes: tuple[str, ...] = ()) -> None:
        """Continue a run from its newest good checkpoint; `changes` raise train.max_steps to extend a finished one."""
        from studio.train.training import run_training

        log = JsonlSink(run_dir / "events.jsonl")
        self._take_gpu_for("training")
        try:
            self._run_job("train", run_dir.name, lambda sink, stop: run_training(
                run_dir, fan_out(log, sink), stop, resume=True, changes=changes, gpu_in_child=True))
        except BaseException:
            self.gpu.release()
            raise

    def start_export(self, run_dir: Path, gguf_types: tuple, formats: tuple, checkpoint: str = "") -> None:
        """Export the run's final weights, or `checkpoint` (checkpoint-N), in the background."""
        from studio.export.exporting import export_run
        from studio.runs import load_run_config

        tokens = load_run_config(run_dir).export.verify_tokens
        self._take_gpu_for("export")
        try:
            self._run_job("export", run_dir.name,
                          lambda sink, stop: export_run(run_dir, gguf_types, formats, sink, tokens, stop, checkpoint))
        except BaseException:
            self.gpu.release()
            raise

    def start_evaluation(self, run_dir: Path, spec) -> None:
        """Score the run's models (an `EvalSpec`) in the background; the result is the job's `result`."""
        from studio.evaluate.evaluation import run_evaluation

        self._take_gpu_for("evaluation")
        try:
            self._run_job("evaluate", run_dir.name, lambda sink, stop: run_evaluation(run_dir, spec, sink, stop))
        except BaseException:
            self.gpu.release()
            raise

    def _take_gpu_for(self, what: str) -> None:
        """Claim the GPU for a job: a reply still streaming ends at its next token, then the chat models are freed."""
        self._refuse_if_busy()
        self.chat_stop.set()
        self.gpu.claim(what, wait=30)
        self.close_chat()

    def _run_job(self, kind: str, name: str, work) -> None:
        """Start `work` as the background job; it gives the GPU back when it ends, however it ends."""
        def work_then_release(sink, stop):
            try:
                return work(sink, stop)
            finally:
                self.gpu.release()

        self.jobs.start(kind, name, work_then_release)

    def _refuse_if_busy(self) -> None:
        if self.jobs.busy:
            snap = self.jobs.snapshot()
            raise BusyError(f"Busy: a {snap.kind} job ({snap.name}) is running. Wait for it or stop it first.")

    # ------------------------------------------------------------ chat

    def stream_pane(self, mode: str, run: str | None, gguf: str | None, other: str | None,
                    messages: list[dict], settings: ReplySettings | None = None, stop=None) -> Iterator[str]:
        """One chat pane: "base" / "tuned" (the run's weights, adapter off / on), "gguf", or "other" (any model).

        `settings` change some generation fields for this reply, on top of the
        model's own. The reply holds the GPU while it loads its model and
        generates; a running training or export job makes it answer Busy at once.
        """
        self._refuse_if_busy()
        with self.gpu.held("a chat reply", wait=60):
            yield from self.chat.stream(mode, run, gguf, other, messages, settings or ReplySettings(), stop)

    def list_ggufs(self) -> list[str]:
        return sorted(str(p) for p in self.runs_dir.glob("*/exports/*.gguf"))

    def close_chat(self) -> None:
        """End any reply in flight and free every chat model (training and export need the memory)."""
        self.chat_stop.set()
        self.chat.close()
