"""Trainer callbacks: progress events, the stop button, and the run's health.

    ProgressCallback   logs -> "log"/"eval"/"checkpoint" events; Stop -> a checkpoint at this step, then out
    HealthCallback     non-finite values stop the run as diverged (no checkpoint of bad weights is written);
                       rising or spiking losses, overfitting and rewards that never vary become "warning" events
    RecentBatches      remembers the token ids of the last step's batches, to name their rows on divergence
    TrainedTokens      counts the tokens trained on, for tokens/s, without making the CPU wait for the GPU
"""

from __future__ import annotations

import threading
import time

import torch
from transformers import TrainerCallback

from studio.events import Event, Sink
from studio.hardware import MemoryProbe, parallel_engine
from studio.train.health import Divergence, TrainingHealth

# A trainer's log entry holding a few of the step's completions with their rewards (grpo), sent with the log event.
SAMPLES_KEY = "completion_samples"


class ProgressCallback(TrainerCallback):
    """Turns trainer logs into events, and checks the stop event after every step."""

    def __init__(self, sink: Sink, stop: threading.Event, probe: MemoryProbe, tokens: TrainedTokens,
                 curves: tuple[str, ...] = ()) -> None:
        self.sink, self.stop, self.probe, self.tokens = sink, stop, probe, tokens
        self.curves = curves  # the method's own logged values, passed on with each log
        self.started_at = time.time()
        self.first_step = 0
        self.last_time = self.started_at
        self.first_log: tuple[int, float] | None = None  # (step, time) of the run's first log

    def on_train_begin(self, args, state, control, **kwargs):
        self.started_at = self.last_time = time.time()
        self.first_step = state.global_step
        self.first_log = None

    def on_step_end(self, args, state, control, **kwargs):
        if state.max_steps and state.global_step >= state.max_steps:
            control.should_save = True  # the last step always leaves a checkpoint: the run can be extended later
        agree = getattr(self.stop, "agree", None)  # one of several processes: all stop at the same step
        if agree is not None:
            agree()
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
            evals = method_metrics(logs, self.curves, prefix="eval_")
            self.sink(Event("eval", step=state.global_step, max_steps=state.max_steps, eval_loss=logs["eval_loss"],
                            extra={"metrics": evals} if evals else {}))
        if "loss" not in logs:
            return
        metrics = method_metrics(logs, self.curves)
        extra = {"metrics": metrics} if metrics else {}
        if logs.get(SAMPLES_KEY):
            extra["samples"] = logs[SAMPLES_KEY]
        memory, tokens = _every_process(self.probe.snapshot().to_dict(), self.tokens.take())
        tokens_per_second = tokens / max(now - self.last_time, 1e-9)
        self.last_time = now
        elapsed = now - self.started_at
        eta = self._seconds_left(state.global_step, state.max_steps, now)
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
            memory=memory,
            extra=extra,
        ))
        # A stop asked for while this step's numbers were shown still stops at this step.
        return self._stop_if_asked(control)

    def _seconds_left(self, step: int, max_steps: int, now: float) -> float | None:
        """At the pace since the first log: the steps before it also compiled layers, tuned kernels and
        filled caches (14 s instead of 0.3 s for a compiled 1B step), which the rest of the run does not."""
        if self.first_log is None:
            self.first_log = (step, now)
        first_step, first_time = self.first_log
        if step > first_step:
            return (now - first_time) / (step - first_step) * (max_steps - step)
        done = step - self.first_step
        return (now - self.started_at) / done * (max_steps - step) if done > 0 else None

    def close(self) -> None:
        self.tokens.close()

    def on_save(self, args, state, control, **kwargs):
        self.sink(Event("checkpoint", message=f"Checkpoint saved at step {state.global_step}", step=state.global_step))


def _every_process(memory: dict, tokens: int) -> tuple[dict, int]:
    """This process's memory readings and tokens trained since the last log, as every process together
    has them: the memory of each as "devices", the tokens summed.

    Called at the same logging step on every process (the trainer logs in step), so the gather meets.
    """
    import torch.distributed as dist

    from studio.train.rank import host_group

    group = host_group()
    if group is None:
        return memory, tokens
    gathered: list = [None] * dist.get_world_size()
    ours = {k: v for k, v in memory.items() if v is not None and not k.startswith("ram_")}
    dist.all_gather_object(gathered, (ours, tokens), group=group)
    return {**memory, "devices": [m for m, _ in gathered]}, sum(t for _, t in gathered)


def method_metrics(logs: dict, names: tuple[str, ...], prefix: str = "") -> dict[str, float]:
    """The method's own values in one trainer log (rewards, margins, KL ...), under their names without `prefix`.

    A name ending in "/" takes every value logged under it ("rewards/": each reward function's mean and std).
    """
    out = {}
    for key, value in logs.items():
        name = key[len(prefix):] if key.startswith(prefix) else None
        wanted = name is not None and (name in names or any(n.endswith("/") and name.startswith(n) for n in names))
        if wanted and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


class RecentBatches:
    """The token ids the model saw since the last log (references only: no copy, no wait for the GPU).

    On divergence, `rows()` names where those rows came from (file:line), by
    matching their token ids against the training rows.
    """

    def __init__(self, model, train_rows) -> None:
        self.train_rows = train_rows  # training rows of any shape: .sequences (token ids) and .where
        self.batches: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        self.hook = model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if module.training and isinstance(ids, torch.Tensor):
            self.batches.append((ids, kwargs.get("attention_mask")))

    def step_done(self) -> None:
        self.batches.clear()

    def rows(self) -> tuple[str, ...]:
        """file:line of each row in the recorded batches that is found among the training rows."""
        known = {hash(tuple(ids)): r.where for r in self.train_rows if r.where for ids in r.sequences}
        found: list[str] = []
        for ids, mask in self.batches:
            lengths = mask.sum(dim=1).tolist() if mask is not None else [ids.shape[1]] * ids.shape[0]
            for row, length in zip(ids.detach().to("cpu").tolist(), lengths):
                where = known.get(hash(tuple(row[: int(length)])))
                if where and where not in found:
                    found.append(where)
        return tuple(found)

    def close(self) -> None:
        self.hook.remove()


class TrainedTokens:
    """The tokens the model trained on (padding not counted) since the last `take()`.

    The trainer's own count reads the GPU after every batch (and, across processes, gathers
    it), which stalls the CPU that should be queuing the next batch's work. Here the count
    stays a number on the device, added to as batches go in, until a log reads it: a log
    waits for the GPU anyway, for the loss.
    """

    def __init__(self, model) -> None:
        self.count: torch.Tensor | int = 0
        self.hook = model.register_forward_pre_hook(self._add, with_kwargs=True)

    def _add(self, module, args, kwargs):
        if not (module.training and torch.is_grad_enabled()):
            return  # evaluation, generation (grpo) and reference scoring train on nothing
        ids = kwargs.get("input_ids", args[0] if args else None)
        if not isinstance(ids, torch.Tensor):
            return
        mask = kwargs.get("attention_mask")
        # Packed rows come without a mask and without padding. (A 4-D mask, which no studio
        # batch has, would count the padding too: every position of the rows.)
        self.count = self.count + (mask.sum() if isinstance(mask, torch.Tensor) and mask.dim() == 2 else ids.numel())

    def take(self) -> int:
        count, self.count = int(self.count), 0
        return count

    def close(self) -> None:
        self.hook.remove()


class HealthCallback(TrainerCallback):
    """Stops a diverging run without saving its bad weights, and reports warnings as events.

    Runs after ProgressCallback, so its decision not to save wins over a Stop
    that asked for a checkpoint at the same step.
    """

    def __init__(self, health: TrainingHealth, sink: Sink, batches: RecentBatches | None = None,
                 grad_norms: bool = True) -> None:
        self.health, self.sink, self.batches = health, sink, batches
        self.grad_norms = grad_norms  # False: the trainer's grad norm means nothing (layer-wise updates)
        self.bad_weights_at: int | None = None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        # A checkpoint is about to be written: never write one of non-finite weights, even
        # when the logging interval has not shown the bad values yet.
        if control.should_save and model is not None and not trainable_weights_finite(model):
            self.bad_weights_at = state.global_step
            self._stop_without_saving(control)
            if not control.should_log:
                self._diverged(Divergence(state.global_step, None, None, self.health.learning_rate, False))
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs or "grad_norm" in logs:
            grad_norm = logs.get("grad_norm") if self.grad_norms else None
            verdict = self.health.observe(state.global_step, logs.get("loss"), grad_norm)
            if isinstance(verdict, Divergence):
                self._stop_without_saving(control)
                self._diverged(verdict)
            else:
                self._warn(verdict, state.global_step)
            if self.batches:
                self.batches.step_done()
        if "eval_loss" in logs:
            self._warn(self.health.observe_eval(state.global_step, logs["eval_loss"]), state.global_step)
        if "reward" in logs:
            self._warn(self.health.observe_rewards(state.global_step, logs), state.global_step)
        return control

    def _diverged(self, verdict: Divergence) -> None:
        if verdict.data_cause_likely and self.batches:
            verdict = Divergence(verdict.step, verdict.loss, verdict.grad_norm, verdict.learning_rate, True,
                                 self.batches.rows())
        self.health.divergence = verdict

    @staticmethod
    def _stop_without_saving(control) -> None:
        control.should_training_stop = True
        control.should_save = False
        control.should_evaluate = False

    def close(self) -> None:
        if self.batches:
            self.batches.close()

    def _warn(self, warnings: list[str], step: int) -> None:
        for text in warnings:
            self.sink(Event("warning", message=text, step=step))


def trainable_weights_finite(model) -> bool:
    """Whether every trained weight is a finite number (a cheap check on LoRA: only the adapter).

    Under DeepSpeed ZeRO-3 each process holds a part of each weight (its ds_tensor; the weight itself is an
    empty placeholder) and checks that part: the processes then agree, so that all of them write the
    checkpoint or none (writing one takes them all)."""
    with torch.no_grad():
        finite = all(bool(torch.isfinite(getattr(p, "ds_tensor", p)).all())
                     for p in model.parameters() if p.requires_grad)
    if parallel_engine() == "deepspeed-zero3":
        import torch.distributed as dist

        agreed = torch.tensor([int(finite)], device="cuda" if torch.cuda.is_available() else "cpu")  # NCCL: GPU
        dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
        finite = bool(agreed.item())
    return finite
