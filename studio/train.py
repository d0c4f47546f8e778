"""Supervised fine-tuning through TRL, reported as events, stoppable, resumable.

    run_dir = create_run_dir(cfg)
    result = run_training(run_dir, sink=ConsoleSink(), stop=threading.Event())
    result = run_training(run_dir, sink, stop, resume=True)   # after a stop or crash

Run as:  python launch.py train recipes/quickstart.yaml train.max_steps=30
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PrinterCallback, TrainerCallback

from studio.config import RunConfig
from studio.data import build_dataset, to_hf_dataset
from studio.errors import ConfigError, StudioError, TrainingError
from studio.events import Event, Sink
from studio.hardware import MemoryProbe, free_accelerator_memory, has_cuda, resolve_dtype
from studio.long_rows import slice_feed_forward
from studio.models import EmbeddingsInCpuMemory, attach_lora, feed_cpu_ids, keep_input_embeddings_on_cpu, load_model
from studio.runs import latest_checkpoint, load_run_config, read_template, write_status
from studio.templates import Template, resolve_template, template_warnings


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    state: str  # "completed" or "stopped"
    step: int
    final_loss: float | None


def run_training(run_dir: Path, sink: Sink, stop: threading.Event | None = None, resume: bool = False) -> TrainResult:
    """Train the run in `run_dir` as its config.yaml says; on resume, continue from its newest checkpoint."""
    stop = stop or threading.Event()
    cfg = load_run_config(run_dir)
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if resume and checkpoint is None and (run_dir / "events.jsonl").exists():
        sink(Event("stage", message="No complete checkpoint in this run yet: training starts from step 0."))
    write_status(run_dir, state="running", error=None)
    sink(Event("start", message=f"{'Resuming' if checkpoint else 'Starting'} {run_dir.name}", max_steps=cfg.train.max_steps))
    model = trainer = None
    try:
        _check_method(cfg)
        sink(Event("stage", message=f"Loading {cfg.model.name_or_path} ({cfg.model.load_in})"))
        model, tokenizer = load_for_training(cfg, note=lambda text: sink(Event("stage", message=text)))
        template = _run_template(run_dir, cfg, tokenizer)
        for warning in template_warnings(tokenizer, template):
            sink(Event("stage", message=f"Note: {warning}"))
        built = build_dataset(cfg.data, tokenizer, template, cfg.train.max_length)
        sink(Event("stage", message=f"Data: {len(built.train)} training rows, {len(built.eval)} eval rows "
                   f"({built.format}, template {template.name}); {built.truncated} rows cut at {cfg.train.max_length} tokens"))
        if built.skipped or built.nothing_to_learn:
            sink(Event("stage", message=f"Data: {built.summary}"))
        for note in built.notes:
            sink(Event("stage", message=f"Note: {note}"))
        trainer = _make_trainer(cfg, run_dir, model, tokenizer, built, sink, stop)
        with scoring_only_trained_positions():
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        stopped = stop.is_set()
        _save_weights(trainer, tokenizer, template, run_dir, cfg)
        state = "stopped" if stopped else "completed"
        step = trainer.state.global_step
        loss = _last_loss(trainer)
        write_status(run_dir, state=state, step=step, loss=loss)
        sink(Event("end", message=f"Training {state} at step {step}.", step=step, loss=loss, extra={"state": state}))
        return TrainResult(run_dir, state, step, loss)
    except BaseException as exc:
        error = _describe_failure(exc)
        write_status(run_dir, state="failed", error=error)
        sink(Event("end", message=f"Training failed: {error}", extra={"state": "failed"}))
        if isinstance(exc, StudioError) or not isinstance(exc, Exception):
            raise
        raise TrainingError(error) from exc
    finally:
        del model, trainer
        free_accelerator_memory()


def load_for_training(cfg: RunConfig, note=lambda text: None):
    """The model as training uses it: loaded as configured, embeddings placed, adapter attached."""
    model, tokenizer = load_model(cfg.model)
    if cfg.lora.enabled:
        if cfg.train.cpu_embeddings and keep_input_embeddings_on_cpu(model):
            table = model.get_input_embeddings().weight
            note(f"Input embeddings kept in CPU memory ({table.numel() * table.element_size() / 1024**3:.1f} GiB "
                 "of GPU memory spared).")
        torch.manual_seed(cfg.train.seed)  # the same adapter initialisation on every run of a recipe
        model = attach_lora(model, cfg.lora)
    slice_feed_forward(model, cfg.train.feed_forward_slice)
    return model, tokenizer


@contextlib.contextmanager
def scoring_only_trained_positions():
    """Let TRL's fused LM head score only the positions that have a label, on every device.

    TRL projects just the labelled positions through the LM head on CUDA, but
    every position elsewhere (fixed tile shapes suit compiled accelerators). On a
    CPU that wastes most of a step: with a 262k vocabulary and masked prompts,
    the head over prompt tokens is the bulk of the work. The loss is the same
    (tests/test_train.py checks it); the quickstart trains twice as fast.
    """
    import trl.trainer.utils as trl_utils

    decide = trl_utils._use_triton
    trl_utils._use_triton = lambda device: device.type == "cpu" or decide(device)
    try:
        yield
    finally:
        trl_utils._use_triton = decide


def _check_method(cfg: RunConfig) -> None:
    if not cfg.lora.enabled and cfg.model.load_in != "16bit":
        raise ConfigError(
            f"Full fine-tuning needs 16-bit weights, but model.load_in is {cfg.model.load_in}. "
            "Set lora.enabled=true (QLoRA) or model.load_in=16bit."
        )


def _run_template(run_dir: Path, cfg: RunConfig, tokenizer) -> Template:
    """The run's template: chosen once at the start, then read back from template.jinja (resume, chat, export)."""
    stored = run_dir / "template.jinja"
    if stored.is_file():
        return read_template(run_dir)
    template = resolve_template(cfg.data.template, tokenizer)
    stored.write_text(template.jinja, encoding="utf-8")
    return template


def _make_trainer(cfg: RunConfig, run_dir: Path, model, tokenizer, built, sink: Sink, stop: threading.Event):
    from trl import pack_dataset

    train_dataset = to_hf_dataset(built.train)
    eval_dataset = to_hf_dataset(built.eval) if built.eval else None
    if cfg.train.packing:
        # Best-fit packing keeps rows whole; the trainer then keeps them apart in attention.
        train_dataset = pack_dataset(train_dataset, cfg.train.max_length, "bfd")
    return make_trainer(cfg, run_dir / "checkpoints", model, tokenizer, train_dataset, eval_dataset,
                        callbacks=[ProgressCallback(sink, stop, MemoryProbe())])


def make_trainer(cfg: RunConfig, output_dir: Path, model, tokenizer, train_dataset, eval_dataset=None,
                 callbacks=(), **overrides):
    """TRL's SFTTrainer set up as the studio trains: the one place training options are decided.

    `train_dataset` holds finished rows (input_ids, labels). `overrides` replace
    SFTConfig fields (the benchmark turns saving off, for instance).
    """
    from trl import SFTConfig, SFTTrainer

    t = cfg.train
    dtype = resolve_dtype(cfg.model.dtype)
    has_eval = eval_dataset is not None
    options = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        max_steps=t.max_steps if t.max_steps > 0 else -1,
        num_train_epochs=t.epochs,
        learning_rate=t.learning_rate,
        warmup_steps=t.warmup_steps,
        lr_scheduler_type=t.scheduler,
        optim=_optimizer(t.optimizer),
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        max_length=t.max_length,
        packing=t.packing,
        activation_checkpointing=t.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False, "selective": t.selective_checkpointing},
        logging_steps=t.logging_steps,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        bf16=has_cuda() and dtype == torch.bfloat16,
        fp16=has_cuda() and dtype == torch.float16,
        use_cpu=not has_cuda(),
        report_to="none",
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        # Rows arrive tokenized, masked (labels) and cut to max_length by studio.data: the
        # preview shows exactly what trains, and TRL has nothing left to redo.
        dataset_kwargs={"skip_prepare_dataset": True},
        **cuda_speedups(t),
    )
    options.update(overrides)
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(**options),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )
    trainer.remove_callback(PrinterCallback)  # progress goes through the callbacks instead
    if isinstance(model.get_input_embeddings(), EmbeddingsInCpuMemory):
        trainer.data_collator = feed_cpu_ids(trainer.model, trainer.data_collator)
    return trainer


def cuda_speedups(t) -> dict:
    """SFTConfig options that only exist on CUDA: Liger's fused kernels and activation offload.

    TRL already scores the loss through its own fused LM head (no full logits
    tensor), so Liger's cross-entropy stays off and only its RMSNorm, RoPE and
    SwiGLU kernels are used.
    """
    if not has_cuda():
        return {}
    options = {}
    if t.kernels == "liger" and not liger_available():
        raise ConfigError("train.kernels is liger, but Liger Kernel is not installed: "
                          "pip install -r requirements-cuda.txt, or set train.kernels=auto.")
    if t.kernels == "liger" or (t.kernels == "auto" and liger_available()):
        options["use_liger_kernel"] = True
        options["liger_kernel_config"] = {"rms_norm": True, "rope": True, "swiglu": True,
                                          "cross_entropy": False, "fused_linear_cross_entropy": False}
    if t.offload_activations:
        options["activation_offloading"] = True
    return options


def liger_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("liger_kernel") is not None


def _optimizer(name: str) -> str:
    if name == "auto":
        return "adamw_bnb_8bit" if has_cuda() else "adamw_torch"
    return {"adamw_8bit": "adamw_bnb_8bit"}.get(name, name)


def _save_weights(trainer, tokenizer, template: Template, run_dir: Path, cfg: RunConfig) -> None:
    """Write adapter/ (or model/ for full fine-tuning) under a temporary name, then rename."""
    final = run_dir / ("adapter" if cfg.lora.enabled else "model")
    tmp = final.with_name(final.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.model.save_pretrained(tmp)
    tokenizer.chat_template = template.jinja
    tokenizer.save_pretrained(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _last_loss(trainer) -> float | None:
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return losses[-1] if losses else None


def _describe_failure(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    text = str(exc) or type(exc).__name__
    if "out of memory" in text.lower():
        return (f"{text.splitlines()[0]} Lower train.batch_size or train.max_length, turn on "
                "train.gradient_checkpointing, or load the model in 4bit (model.load_in=4bit).")
    return text


class ProgressCallback(TrainerCallback):
    """Turns trainer logs into events, and checks the stop event after every step."""

    def __init__(self, sink: Sink, stop: threading.Event, probe: MemoryProbe) -> None:
        self.sink, self.stop, self.probe = sink, stop, probe
        self.started_at = time.time()
        self.first_step = 0
        self.last_time = self.started_at
        self.last_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started_at = self.last_time = time.time()
        self.first_step = state.global_step
        self.last_tokens = state.num_input_tokens_seen

    def on_step_end(self, args, state, control, **kwargs):
        return self._stop_if_asked(control)

    def _stop_if_asked(self, control):
        if self.stop.is_set():
            # Save a checkpoint at this step, then leave the loop cleanly.
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        now = time.time()
        if "eval_loss" in logs:
            self.sink(Event("eval", step=state.global_step, max_steps=state.max_steps, eval_loss=logs["eval_loss"]))
        if "loss" not in logs:
            return
        tokens = state.num_input_tokens_seen - self.last_tokens
        tokens_per_second = tokens / max(now - self.last_time, 1e-9)
        self.last_time, self.last_tokens = now, state.num_input_tokens_seen
        done = state.global_step - self.first_step
        elapsed = now - self.started_at
        eta = elapsed / done * (state.max_steps - state.global_step) if done > 0 else None
        self.sink(Event(
            "log",
            step=state.global_step,
            max_steps=state.max_steps,
            epoch=state.epoch,
            loss=logs["loss"],
            learning_rate=logs.get("learning_rate"),
            grad_norm=logs.get("grad_norm"),
            tokens_per_second=tokens_per_second,
            elapsed_s=elapsed,
            eta_s=eta,
            memory=self.probe.snapshot().to_dict(),
        ))
        # A stop asked for while this step's numbers were shown still stops at this step.
        return self._stop_if_asked(control)

    def on_save(self, args, state, control, **kwargs):
        self.sink(Event("checkpoint", message=f"Checkpoint saved at step {state.global_step}", step=state.global_step))
