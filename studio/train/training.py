"""A run's training through TRL (the method's trainer), reported as events, stoppable, resumable.

    run_dir = create_run_dir(cfg, runs_dir="runs")
    result = run_training(run_dir, sink=ConsoleSink(), stop=threading.Event())
    result = run_training(run_dir, sink, stop, resume=True)   # after a stop or crash

Run as:  python launch.py train recipes/quickstart.yaml train.max_steps=30
"""

from __future__ import annotations

import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from transformers import EarlyStoppingCallback

from studio.train.callbacks import HealthCallback, ProgressCallback, RecentBatches, TrainedTokens
from studio.train.checkpoints import (check_disk_for_run, checkpoint_engine, checkpoint_step, deepspeed_processes,
                                     keep_last_good_checkpoint, keep_resume_changes, latest_checkpoint,
                                     prepare_resume, remove_unfinished_checkpoints, tokenizer_bytes)
from studio.config import RunConfig
from studio.data.building import build_dataset, to_hf_dataset
from studio.errors import ConfigError, DiskSpaceError, StudioError, TrainingError
from studio.events import Event, Sink
from studio.hardware import (MemoryProbe, cap_gpu_memory, free_accelerator_memory, is_main_process, split_states,
                             world_size)
from studio.train.health import Divergence, TrainingHealth
from studio.models import hf_folder, load_model
from studio.speed.apply import prepare_for_training
from studio.speed.patches import training_patches
from studio.train.methods import method_for
from studio.recipes import replace_section
from studio.runs import (disk_full_text, is_disk_full, load_run_config, lock_run, read_template, write_atomically,
                         write_status)
from studio.train.placement import SPLIT_STATE_ENGINES, Placement, split_grad_accum
from studio.data.templates import Template, resolve_template, template_warnings


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    state: str  # "completed", "stopped" or "diverged"
    step: int
    final_loss: float | None
    health: str = ""  # how the run went, in plain words


def run_training(run_dir: Path, sink: Sink, stop: threading.Event | None = None, resume: bool = False,
                 changes: Sequence[str] = (), gpu_in_child: bool = False) -> TrainResult:
    """Train the run in `run_dir` as its config.yaml says; on resume, continue from its newest good checkpoint.

    The run is locked for the whole job: a second training or export of it, from
    any process, is refused. `changes` (resume only) raise train.max_steps or
    train.epochs to extend a finished run, or move it to other devices.
    `gpu_in_child`: a run on one GPU trains in a child process too (the UI's: a GPU step is mostly
    Python launching kernels, which the web server's threads would slow, holding the interpreter).
    """
    from studio.train.parallel import train_in_ranks
    from studio.train.placement import plan_placement

    stop = stop or threading.Event()
    with lock_run(run_dir, "training"):
        checkpoint, cfg = prepare_resume(run_dir, changes, sink) if resume else (None, load_run_config(run_dir))
        placement = plan_placement(cfg)
        if checkpoint is not None:
            _check_engine_of(checkpoint, placement)
        if resume:
            keep_resume_changes(run_dir, cfg, changes, sink)
        if placement.in_process and not (gpu_in_child and placement.gpus):
            return train_run(run_dir, sink, stop, checkpoint)
        write_status(run_dir, state="running", error=None, health=None)
        # A GGUF or the built-in model is turned into a model folder once, here, not by every process at once.
        hf_folder(cfg.model.name_or_path)
        return train_in_ranks(run_dir, placement, sink, stop, checkpoint)


def _check_engine_of(checkpoint: Path, placement: Placement) -> None:
    """A checkpoint resumes under the engine that wrote it (sharded states are kept in a form of its own), and
    DeepSpeed's in as many processes as wrote it (one file of states each)."""
    wrote = checkpoint_engine(checkpoint)
    engine = placement.engine if placement.engine in SPLIT_STATE_ENGINES else "plain"
    if wrote.startswith("deepspeed"):
        processes = deepspeed_processes(checkpoint)
        if wrote == engine and processes == placement.processes:
            return
        raise ConfigError(f"{checkpoint.name} was written by DeepSpeed ZeRO-{wrote[-1]} in {processes} processes, "
                          f"and this resume would train {placement.describe()}: resume it with "
                          f"train.parallel={wrote} on {processes} devices (train.devices).")
    if wrote != engine:
        who = {"fsdp": "sharded (FSDP)", "plain": "unsharded"}[wrote]
        raise ConfigError(f"{checkpoint.name} was written by {who} training, and this resume would train "
                          f"{placement.describe()}: resume it with "
                          + ("train.parallel=fsdp on several GPUs." if wrote == "fsdp" else
                             "train.parallel=ddp, or on one device."))


def train_run(run_dir: Path, sink: Sink, stop: threading.Event, checkpoint: Path | None) -> TrainResult:
    """The training itself, in this process: alone, or as one rank of several (studio.train.rank)."""
    cfg = load_run_config(run_dir)
    if world_size() > 1:
        cfg = replace_section(cfg, "train", grad_accum=split_grad_accum(cfg.train.grad_accum, world_size()))
    if is_main_process():
        try:
            write_status(run_dir, state="running", error=None, health=None)
        except OSError as exc:
            if not is_disk_full(exc, run_dir):
                raise
            raise DiskSpaceError(f"{run_dir.name} cannot start: {disk_full_text(run_dir)}") from None
    sink(Event("start", message=f"{'Resuming' if checkpoint else 'Starting'} {run_dir.name}", max_steps=cfg.train.max_steps))
    model = trainer = watch = progress = None
    try:
        if cfg.train.gpu_memory_cap:
            cap_gpu_memory(cfg.train.gpu_memory_cap)
            sink(Event("stage", message=f"Each GPU is capped at {cfg.train.gpu_memory_cap:g} GiB (train.gpu_memory_cap)"))
        sink(Event("stage", message=f"Loading {cfg.model.name_or_path} ({cfg.model.load_in})"))
        model, tokenizer = load_for_training(cfg, note=lambda text: sink(Event("stage", message=text)))
        template = _run_template(run_dir, cfg, tokenizer)
        for warning in template_warnings(tokenizer, template):
            sink(Event("stage", message=f"Note: {warning}"))
        method = method_for(cfg.train.method)
        built = build_dataset(cfg.data, tokenizer, template, cfg.train.max_length, method.shape, method.name)
        sink(Event("stage", message=f"Data: {len(built.train)} training rows, {len(built.eval)} eval rows "
                   f"({built.format}, template {template.name}); {built.truncated} rows cut at {cfg.train.max_length} tokens"))
        if built.skipped or built.nothing_to_learn:
            sink(Event("stage", message=f"Data: {built.summary}"))
        for note in built.notes:
            sink(Event("stage", message=f"Note: {note}"))
        if is_main_process():
            check_disk_for_run(run_dir, cfg, model, tokenizer_bytes(hf_folder(cfg.model.name_or_path)))
        trainer, progress, watch = _make_trainer(cfg, run_dir, model, tokenizer, built, sink, stop, checkpoint)
        with training_patches(cfg):
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        return _finish(run_dir, cfg, trainer, tokenizer, template, watch, stop, sink)
    except BaseException as exc:
        _record_failure(run_dir, exc, trainer, sink)
        if isinstance(exc, StudioError) or not isinstance(exc, Exception):
            raise
        raise TrainingError(_describe_failure(exc)) from exc
    finally:
        for callback in (progress, watch):
            if callback is not None:
                callback.close()  # their hooks off the model
        del model, trainer
        free_accelerator_memory()
        if cfg.train.gpu_memory_cap:
            cap_gpu_memory(0)  # the studio's chat and export use the whole card again


def _finish(run_dir, cfg, trainer, tokenizer, template, watch, stop, sink) -> TrainResult:
    """Keep the right weights, record the state and the health summary."""
    health, step = watch.health, trainer.state.global_step
    if health.divergence is None and watch.bad_weights_at is not None:
        health.divergence = Divergence(watch.bad_weights_at, None, None, cfg.train.learning_rate, False)
    last_good = None
    if health.divergence:
        state = "diverged"
        if is_main_process():
            last_good = keep_last_good_checkpoint(run_dir, cfg, tokenizer, template, health.first_bad_weights())
    else:
        state = "stopped" if stop.is_set() else "completed"
        _save_weights(trainer, tokenizer, template, run_dir, cfg)
    summary = health.summary(state, step, last_good)
    if state == "completed" and cfg.train.max_steps and step < cfg.train.max_steps:
        summary = f"Stopped early at step {step}: the eval loss stopped improving; the best weights are kept. {summary}"
    loss = _last_loss(trainer)
    if is_main_process():
        write_status(run_dir, state=state, step=step, loss=loss, health=summary, warnings=len(health.warnings))
    message = summary if state == "diverged" else f"Training {state} at step {step}. {summary}"
    sink(Event("end", message=message, step=step, loss=loss,
               extra={"state": state, "health": summary}))
    return TrainResult(run_dir, state, step, loss, summary)


def _record_failure(run_dir: Path, exc: BaseException, trainer, sink: Sink) -> None:
    """Write the run's true state after an error; never let the report itself fail (a full disk)."""
    step = trainer.state.global_step if trainer is not None else None
    state = "failed"
    disk_full = is_disk_full(exc, run_dir)
    if disk_full and is_main_process():
        remove_unfinished_checkpoints(run_dir)
        good = latest_checkpoint(run_dir)
        resume = (f"Its newest whole checkpoint is {good.name}: free some space, then resume the run."
                  if good else "No checkpoint was completed: free some space and start again.")
        error = f"Training stopped at step {step or 0}: {disk_full_text(run_dir)} {resume}"
    elif isinstance(exc, KeyboardInterrupt):
        state = "interrupted"
        good = latest_checkpoint(run_dir)
        error = (f"Aborted at step {step or 0} without a checkpoint at that step; "
                 + (f"resume continues from {good.name}." if good else "no checkpoint to resume from yet."))
    else:
        error = _describe_failure(exc)
    for record in (lambda: is_main_process() and write_status(run_dir, state=state, error=error, step=step),
                   lambda: sink(Event("end", message=f"Training {state}: {error}", step=step,
                                      extra={"state": state, "error": error, "error_type": type(exc).__name__}))):
        try:
            record()
        except OSError:
            pass  # the disk is full: the lock, released on exit, still lets the run read "interrupted"
    if disk_full:
        raise DiskSpaceError(error) from None


def load_for_training(cfg: RunConfig, note=lambda text: None):
    """The model as training uses it: loaded as configured, embeddings placed, adapter attached."""
    model, tokenizer = load_model(cfg.model)
    return prepare_for_training(model, cfg, note), tokenizer


def _run_template(run_dir: Path, cfg: RunConfig, tokenizer) -> Template:
    """The run's template: chosen once at the start, then read back from template.jinja (resume, chat, export)."""
    stored = run_dir / "template.jinja"
    if stored.is_file():
        return read_template(run_dir)
    template = resolve_template(cfg.data.template, tokenizer)
    if is_main_process():  # the other ranks resolve the same template; the file appears whole or not at all
        write_atomically(stored, lambda path: path.write_text(template.jinja, encoding="utf-8"))
    return template


def _make_trainer(cfg: RunConfig, run_dir: Path, model, tokenizer, built, sink: Sink, stop: threading.Event,
                  checkpoint: Path | None = None):
    from trl import pack_dataset

    method = method_for(cfg.train.method)
    train_dataset = to_hf_dataset(built.train, method.shape)
    eval_dataset = to_hf_dataset(built.eval, method.shape) if built.eval else None
    if cfg.train.packing:
        # Best-fit packing keeps rows whole; the trainer then keeps them apart in attention.
        train_dataset = pack_dataset(train_dataset, cfg.train.max_length, "bfd")
    options = early_stopping_options(cfg, eval_dataset is not None, sink)
    health = TrainingHealth(cfg.train.learning_rate, rewarded=method.rewarded)
    if checkpoint is not None:
        _recall_logged_values(health, run_dir, checkpoint_step(checkpoint))
    watch = HealthCallback(health, sink, RecentBatches(model, built.train), grad_norms=not _steps_inside_backward(cfg))
    progress = ProgressCallback(sink, stop, MemoryProbe(), TrainedTokens(model), method.curves)
    callbacks = [progress, watch]
    if cfg.train.early_stopping:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping))
    try:
        trainer = make_trainer(cfg, run_dir / "checkpoints", model, tokenizer, train_dataset, eval_dataset,
                               callbacks=callbacks, **options)
    except BaseException:
        progress.close()  # their hooks off the model
        watch.close()
        raise
    return trainer, progress, watch


def _recall_logged_values(health: TrainingHealth, run_dir: Path, up_to_step: int) -> None:
    """A resumed run's health starts from what the run logged up to its checkpoint, so its summary and its
    rules (how far the loss rose from its start, which weights went bad) speak of the whole run. A session
    that was killed after the checkpoint logged steps that are trained again: the latest record of a step wins."""
    from studio.events import read_events

    events = run_dir / "events.jsonl"
    if not events.is_file():
        return
    losses, evals = {}, {}
    for event in read_events(events):
        if event.step is None or event.step > up_to_step:
            continue
        if event.kind == "log" and event.loss is not None:
            losses[event.step] = event.loss
        elif event.kind == "eval" and event.eval_loss is not None:
            evals[event.step] = event.eval_loss
    health.losses = sorted(losses.items())
    health.evals = sorted(evals.items())


def make_trainer(cfg: RunConfig, output_dir: Path, model, tokenizer, train_dataset, eval_dataset=None,
                 callbacks=(), **overrides):
    """The trainer of the run's method (train.method) set up as the studio trains.

    The datasets hold finished rows in the method's shape (studio.data.building);
    `overrides` replace trainer config fields (the benchmark turns saving off).
    """
    return method_for(cfg.train.method).make_trainer(cfg, output_dir, model, tokenizer, train_dataset, eval_dataset,
                                                     callbacks, **overrides)


def early_stopping_options(cfg: RunConfig, has_eval: bool, sink: Sink) -> dict:
    """SFTConfig options that track the best eval loss, and with train.early_stopping keep those weights.

    With an eval split the trainer remembers the best checkpoint (and keeps it
    through checkpoint rotation). Early stopping also needs a checkpoint at every
    evaluation, so the best weights exist when the run stops.
    """
    t = cfg.train
    if t.early_stopping and not has_eval:
        raise ConfigError("train.early_stopping needs eval rows, but the eval split is empty: raise "
                          "data.eval_fraction or give data.eval_path.")
    if not has_eval:
        return {}
    options = {"metric_for_best_model": "eval_loss", "greater_is_better": False}
    if t.early_stopping:
        if t.save_steps % t.eval_steps:
            sink(Event("stage", message=f"Early stopping: a checkpoint at every evaluation (every {t.eval_steps} "
                                        "steps), so the best weights can be kept."))
            options["save_steps"] = t.eval_steps
        options["load_best_model_at_end"] = True
    return options


def _steps_inside_backward(cfg: RunConfig) -> bool:
    """Layer-wise GaLore steps each layer as its gradient arrives: the trainer's grad norm then reads 0."""
    return cfg.train.method == "galore" and cfg.galore.layerwise


def _save_weights(trainer, tokenizer, template: Template, run_dir: Path, cfg: RunConfig) -> None:
    """Write adapter/ (or model/ for full fine-tuning) under a temporary name, then rename; rank 0 writes."""
    final = run_dir / ("adapter" if cfg.lora.enabled else "model")
    tmp = final.with_name(final.name + ".part")
    if is_main_process():
        shutil.rmtree(tmp, ignore_errors=True)
    if split_states():
        trainer.save_model(str(tmp))  # every rank hands over its shards; rank 0 writes them whole
    elif is_main_process():
        trainer.model.save_pretrained(tmp)
    if not is_main_process():
        return
    _check_every_trained_tensor_saved(tmp, trainer.model)
    (tmp / "training_args.bin").unlink(missing_ok=True)  # the trainer's pickle: no part of the weights
    tokenizer.chat_template = template.jinja
    tokenizer.save_pretrained(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _check_every_trained_tensor_saved(folder: Path, model) -> None:
    """An adapter file that lacks trained LoRA tensors is refused, never kept as the run's result.

    (Sharded training once saved an empty adapter: the library that picks the adapter's tensors out of
    the gathered weights found none, and an untrained adapter would have read as the run's result.)
    """
    from safetensors import safe_open

    file = folder / "adapter_model.safetensors"
    if not file.is_file():
        return  # full weights (model/); prefix and p-tuning adapters have a file but no LoRA tensors: 0 of 0
    with safe_open(file, "pt") as saved_file:
        saved = sum("lora_" in key for key in saved_file.keys())
    trained = sum(p.requires_grad and "lora_" in name for name, p in model.named_parameters())
    if saved < trained:
        raise TrainingError(f"The adapter was saved with {saved} of its {trained} trained LoRA tensors, so the "
                            "run's weights were not kept (its checkpoints were saved the same way and may lack them "
                            "too). This is a fault in saving, not in the data or the settings: please report it "
                            "with the run folder's events.jsonl (and ranks/launcher.log, if there is one).")


def _last_loss(trainer) -> float | None:
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return losses[-1] if losses else None


def _describe_failure(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return (f"Out of memory: {text.splitlines()[0] if text else 'an allocation failed'}. Lower train.batch_size "
                "or train.max_length, turn on train.gradient_checkpointing, or load the model in 4bit "
                "(model.load_in=4bit).")
    return text
