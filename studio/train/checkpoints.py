"""Trainer checkpoints of a run: which are whole, which are damaged and why.

A checkpoint can be cut short by a crash, a kill or a full disk while it was
written. Resume must not trip over it: the damaged one is named (file and
reason), set aside in `<run>/damaged/`, and the newest good one is used.

    good, damaged = scan_checkpoints(run_dir)     # newest good checkpoint or None; [(path, reason)]
    latest_checkpoint(run_dir)                    # the newest good one
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from studio.errors import TrainingError
from studio.events import Event, Sink

if TYPE_CHECKING:
    from studio.config import RunConfig

WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")


def checkpoint_step(path: Path) -> int:
    return int(path.name.split("-")[1].split(".")[0])


def checkpoint_engine(path: Path) -> str:
    """What wrote the checkpoint, which only the same can resume: fsdp, deepspeed-zero2, deepspeed-zero3 (each
    keeps its states in a form of its own), or plain (one device or DDP: the same states in every process)."""
    if _fsdp_optimizer_state(path) or (path / "pytorch_model_fsdp.bin").is_file():
        return "fsdp"
    states = _deepspeed_states(path)
    if states is not None:
        zero3 = any(states.glob("*zero_pp_rank_*_model_states.pt"))
        return "deepspeed-zero3" if zero3 else "deepspeed-zero2"
    return "plain"


def deepspeed_processes(path: Path) -> int:
    """How many processes wrote a DeepSpeed checkpoint."""
    return len(_optimizer_state_files(_deepspeed_states(path)))


def _optimizer_state_files(states: Path | None) -> list[Path]:
    """DeepSpeed's optimizer states in its folder `states`: one file per process (named bf16_... in bf16)."""
    return [] if states is None else list(states.glob("*zero_pp_rank_*_optim_states.pt"))


def _deepspeed_states(path: Path) -> Path | None:
    """The folder of DeepSpeed's states that its file `latest` names (`latest` itself, where nothing is found, when
    it is unreadable or names none); None when the checkpoint has no `latest`: not DeepSpeed's."""
    latest = path / "latest"
    if not latest.is_file():
        return None
    try:
        name = latest.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return latest
    return path / name if name and "/" not in name else latest


def _fsdp_optimizer_state(path: Path) -> bool:
    """FSDP's optimizer state: optimizer.bin (whole) or an optimizer_0/ folder (sharded)."""
    return (path / "optimizer.bin").is_file() or any(path.glob("optimizer_*/"))


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be resumed from, or None when it is whole."""
    state = path / "trainer_state.json"
    if not state.is_file():
        return "trainer_state.json is missing (the checkpoint was not finished)"
    try:
        json.loads(state.read_text(encoding="utf-8"))["global_step"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        return f"trainer_state.json is damaged ({type(exc).__name__}: {exc})"
    deepspeed = _deepspeed_states(path)
    if deepspeed is not None and not _optimizer_state_files(deepspeed):
        return "DeepSpeed's states (the folder its file `latest` names) are missing (the checkpoint was not finished)"
    if not ((path / "optimizer.pt").is_file() or _fsdp_optimizer_state(path) or deepspeed):
        return "optimizer.pt is missing (the checkpoint was not finished)"
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        return "it holds no weights (no *.safetensors)"
    for file in sorted(path.glob("*.safetensors")):
        problem = _safetensors_problem(file)
        if problem:
            return f"{file.name} is damaged ({problem})"
    for file in sorted([*path.glob("*.pt"), *path.glob("*.pth"), *path.glob("optimizer.bin"),
                        *path.glob("pytorch_model_fsdp.bin"), *(deepspeed.glob("*.pt") if deepspeed else [])]):
        # torch.save writes a zip archive whose directory sits at the end: a cut file has none.
        if not zipfile.is_zipfile(file):
            return f"{file.name} is damaged (cut short: {file.stat().st_size:,} bytes)"
    return None


def _safetensors_problem(file: Path) -> str | None:
    from safetensors import safe_open

    try:
        with safe_open(file, framework="pt") as fh:
            keys = fh.keys()
    except Exception as exc:  # safetensors raises its own error type for a bad header or a short file
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    # Resuming from an empty weights file would start the weights over without a word.
    return None if keys else "it holds no tensors"


def scan_checkpoints(run_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest whole checkpoint, and the damaged ones newer than it with their reasons."""
    damaged = []
    for folder in _newest_first(run_dir):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder, damaged
        damaged.append((folder, problem))
    return None, damaged


def _newest_first(run_dir: Path) -> list[Path]:
    """The run's checkpoint folders, the newest first."""
    return sorted((p for p in (run_dir / "checkpoints").glob("checkpoint-*")
                   if p.is_dir() and p.name.split("-")[1].isdigit()), key=checkpoint_step, reverse=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint that was written completely."""
    return scan_checkpoints(run_dir)[0]


def set_aside(folder: Path) -> Path:
    """Move a damaged checkpoint out of the trainer's way into <run>/damaged/ (kept, never deleted).

    Outside checkpoints/: the trainer's rotation would count and delete anything named checkpoint-N there.
    """
    target = folder.parent.parent / "damaged" / folder.name
    n = 1
    while target.exists():
        n += 1
        target = target.with_name(f"{folder.name}-{n}")
    target.parent.mkdir(exist_ok=True)
    folder.rename(target)
    return target


def remove_unfinished_checkpoints(run_dir: Path) -> None:
    """Delete checkpoints newer than the newest good one: this process was writing them when it failed."""
    import shutil

    for folder, _ in scan_checkpoints(run_dir)[1]:
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------- resume


def prepare_resume(run_dir: Path, changes: Sequence[str], sink: Sink) -> tuple[Path | None, RunConfig]:
    """Check that the run can continue, set damaged checkpoints aside; the checkpoint to resume, and the run's
    config with `changes` applied (saved by `keep_resume_changes` once the resume is sure to start, so a resume
    refused later, on devices that cannot take its checkpoint, saves none of them).

    A finished run continues only with a higher train.max_steps (or train.epochs);
    a diverged one not at all (the same settings would diverge again). The devices
    may change (train.devices, train.parallel): a checkpoint resumes on one GPU or several.
    """
    from studio.recipes import apply_overrides
    from studio.runs import load_run_config, read_status, train_again_command
    from studio.train.health import lower_learning_rate

    cfg = load_run_config(run_dir)
    status = read_status(run_dir)
    allowed = ("train.max_steps", "train.epochs", "train.devices", "train.parallel")
    refused = [c for c in changes if c.partition("=")[0].strip() not in allowed]
    if refused:
        raise TrainingError(f"Only {', '.join(allowed[:-1])} and {allowed[-1]} can change when a run is resumed, not "
                            f"{refused[0].partition('=')[0]!r}. For other changes start a new run from its "
                            f"recipe: {train_again_command(run_dir, refused[0])}")
    if status.get("state") == "diverged":
        raise TrainingError(
            f"{run_dir.name} diverged at step {status.get('step')}; resuming it with the same settings would "
            "diverge again. Start a new run with a lower learning rate: "
            + train_again_command(run_dir, f"train.learning_rate={lower_learning_rate(cfg.train.learning_rate):g}"))
    extended = apply_overrides(cfg, list(changes))
    done = status.get("step") or 0
    if status.get("state") == "completed" and not _more_to_do(cfg, extended, done):
        total = f"all {done} steps" if cfg.train.max_steps else f"its {cfg.train.epochs:g} epochs"
        raise TrainingError(
            f"{run_dir.name} already completed {total}. To train it further, give a higher total: "
            f"python launch.py resume {run_dir} train.max_steps={max(done, cfg.train.max_steps) * 2} "
            "(or, in the Train tab, 'Train to step').")
    good, damaged = scan_checkpoints(run_dir)
    for folder, reason in damaged:
        aside = set_aside(folder)
        sink(Event("warning", message=f"Checkpoint {folder.name} is damaged: {reason}. It was moved to "
                                      f"{aside.relative_to(run_dir)}; resuming from "
                                      + (good.name if good else "the start") + "."))
    if good is None and (run_dir / "events.jsonl").exists():
        sink(Event("stage", message="No complete checkpoint in this run yet: training starts from step 0."))
    return good, extended


def keep_resume_changes(run_dir: Path, cfg: RunConfig, changes: Sequence[str], sink: Sink) -> None:
    """Save the resumed run's config when `changes` changed it (prepare_resume checked them)."""
    from studio.runs import load_run_config, save_run_config

    if cfg != load_run_config(run_dir):
        save_run_config(run_dir, cfg)
        sink(Event("stage", message="Changed: " + ", ".join(changes)))


def _more_to_do(before, after, done: int) -> bool:
    if after.train.max_steps:
        return after.train.max_steps > max(done, before.train.max_steps if before.train.max_steps else 0)
    return after.train.epochs > before.train.epochs


def keep_last_good_checkpoint(run_dir: Path, cfg, tokenizer, template, before_step: int | None = None) -> str | None:
    """After divergence: the weights of the newest whole checkpoint (older than `before_step`, the first step
    whose weights are known bad, when given) become the run's weights; its name, or None."""
    import os
    import shutil

    good = next((folder for folder in _newest_first(run_dir)
                 if (before_step is None or checkpoint_step(folder) < before_step) and checkpoint_problem(folder) is None),
                None)
    if good is None:
        return None
    final = run_dir / ("adapter" if cfg.lora.enabled else "model")
    tmp = final.with_name(final.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for file in good.iterdir():
        if file.is_file() and file.name not in TRAINER_ONLY_FILES and not file.name.startswith("rng_state"):
            shutil.copy2(file, tmp / file.name)
    tokenizer.chat_template = template.jinja
    tokenizer.save_pretrained(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return good.name


TRAINER_ONLY_FILES = {"optimizer.pt", "scheduler.pt", "scaler.pt", "trainer_state.json", "training_args.bin",
                      "optimizer.bin", "pytorch_model_fsdp.bin",  # FSDP's
                      "latest", "zero_to_fp32.py", "zero_to_torch.py"}  # DeepSpeed's


# ---------------------------------------------------------------- disk


def check_disk_for_run(run_dir: Path, cfg, model, tokenizer_bytes: int = 0) -> None:
    """Refuse to start when the checkpoints the run will keep, and its final weights, cannot fit on the disk.

    Each of them also holds a copy of the tokenizer's files (`tokenizer_bytes`: 33 MB for Gemma's)."""
    from studio.config_rules import optimizer_for
    from studio.hardware import has_cuda
    from studio.runs import check_free_disk, human_bytes

    trainable = [p for p in model.parameters() if p.requires_grad]
    weight_bytes = sum(p.numel() * p.element_size() for p in trainable)
    # Adam keeps two states per trained weight: 4 bytes each, 1 byte each for the 8-bit optimizers.
    optimizer = optimizer_for(cfg.train.optimizer, has_cuda())
    state_bytes_per_value = 0 if optimizer == "sgd" else (2 if "8bit" in optimizer else 8)
    checkpoint = weight_bytes + sum(p.numel() for p in trainable) * state_bytes_per_value + tokenizer_bytes
    steps = cfg.train.max_steps or 10**9
    kept = min(cfg.train.save_total_limit or 10**9, max(1, steps // max(cfg.train.save_steps, 1)))
    # One more is written before the oldest is removed, one more may be the best by eval loss.
    count = kept + 1 + (1 if cfg.data.eval_fraction or cfg.data.eval_path else 0)
    needed = count * checkpoint + weight_bytes + tokenizer_bytes
    fewer = " (lower train.save_total_limit to keep fewer)" if kept > 1 else ""
    check_free_disk(run_dir, needed, f"{count} checkpoints of about {human_bytes(checkpoint)} and the final "
                                     f"weights{fewer}")


TOKENIZER_FILES = ("special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt")


def tokenizer_bytes(folder) -> int:
    """The size of the tokenizer's files in a model folder (0 for a hub id not yet in a folder)."""
    if not isinstance(folder, Path) or not folder.is_dir():
        return 0
    return sum(f.stat().st_size for f in folder.iterdir()
               if f.is_file() and (f.name.startswith("tokenizer") or f.name in TOKENIZER_FILES))
