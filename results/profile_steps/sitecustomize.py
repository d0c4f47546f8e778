"""Where a training step's time goes, in every process of a run (a measuring aid, not part of the studio).

    PYTHONPATH=results/profile_steps STUDIO_PROFILE_STEPS=8:4 STUDIO_PROFILE_OUT=/tmp/out python3 launch.py train ...

Python imports this file at start-up in every process (the run's ranks too, which inherit PYTHONPATH). It
wraps the trainer's phases in profiler labels, profiles steps 8 to 11 (first:count), and writes
profile-rank-K.txt: each phase's CPU milliseconds a step, and how busy the GPU was over those steps.
"""

import os
import time

SPEC = os.environ.get("STUDIO_PROFILE_STEPS")

if SPEC:
    import functools

    import torch
    import transformers
    from transformers import TrainerCallback
    from transformers.trainer_callback import CallbackHandler

    FIRST, COUNT = (int(v) for v in SPEC.split(":"))

    def labelled(owner, name, label):
        original = getattr(owner, name)

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            with torch.profiler.record_function(label):
                return original(*args, **kwargs)

        setattr(owner, name, wrapper)

    for name in ("training_step", "_maybe_log_save_evaluate", "get_batch_samples", "_clip_grad_norm", "log"):
        labelled(transformers.Trainer, name, f"## Trainer.{name}")
    for name in ("on_step_end", "on_log", "on_pre_optimizer_step", "on_optimizer_step", "on_substep_end",
                 "on_step_begin"):
        labelled(CallbackHandler, name, f"## callbacks.{name}")
    labelled(torch.nn.Module, "zero_grad", "## zero_grad")

    class StepProfiler(TrainerCallback):
        def __init__(self):
            self.profiler = None

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == FIRST - 1 and self.profiler is None:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.profiler = torch.profiler.profile(
                    activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA])
                self.profiler.__enter__()
                self.started = time.perf_counter()
            elif state.global_step == FIRST - 1 + COUNT and self.profiler is not None:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                wall = time.perf_counter() - self.started
                self.profiler.__exit__(None, None, None)
                self.report(wall)

        def report(self, wall):
            rank = os.environ.get("RANK", "0")
            spans = sorted((e.time_range.start, e.time_range.end) for e in self.profiler.events()
                           if e.device_type == torch.autograd.DeviceType.CUDA)
            busy, end = 0.0, float("-inf")
            for start, stop in spans:  # the union of the kernels' time spans, in microseconds
                busy += max(0.0, stop - max(start, end))
                end = max(end, stop)
            lines = [f"rank {rank}: {COUNT} steps from step {FIRST}, {wall / COUNT * 1000:.1f} ms a step, "
                     f"GPU busy {busy / 1000 / COUNT:.1f} ms a step ({busy / 1e6 / wall:.0%})", ""]
            averages = sorted(self.profiler.key_averages(), key=lambda e: -e.cpu_time_total)
            for e in averages[:45]:
                lines.append(f"{e.cpu_time_total / 1000 / COUNT:9.2f} ms cpu  {e.self_cpu_time_total / 1000 / COUNT:9.2f} self"
                             f"  {e.count / COUNT:7.1f}x  {e.key[:90]}")
            out = os.environ.get("STUDIO_PROFILE_OUT", ".")
            with open(os.path.join(out, f"profile-rank-{rank}.txt"), "a") as f:
                f.write("\n".join(lines) + "\n\n")

    original_init = transformers.Trainer.__init__

    @functools.wraps(original_init)
    def init_with_profiler(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.add_callback(StepProfiler())

    transformers.Trainer.__init__ = init_with_profiler
