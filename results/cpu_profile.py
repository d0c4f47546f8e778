"""Where the host's time goes in the studio's training step (GPU machine): torch ops by self CPU time."""
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

from studio.bench import model_folder
from studio.bench.paths import BenchSpec, studio_config, token_rows, train_studio
from studio.train import load_for_training

model_name, method, batch, fused = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
spec = BenchSpec(model_name, method, batch, 2048, steps=2, warmup=3, overrides=(f"train.fused_lora={fused}",))
folder = model_folder(model_name)
cfg = studio_config(spec, folder)
model, tokenizer = load_for_training(cfg)


class Profile(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == 3:
            self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                           torch.profiler.ProfilerActivity.CUDA])
            self.prof.__enter__()

    def on_train_end(self, args, state, control, **kwargs):
        self.prof.__exit__(None, None, None)
        table = self.prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=45, max_name_column_width=70)
        print(table)
        Path(sys.argv[5]).write_text(table)


import studio.bench.paths as paths
original = paths._StepTimer
paths._StepTimer = lambda result, profile_from=None: _Both(result)


class _Both(original, Profile):
    def __init__(self, result):
        original.__init__(self, result)

    def on_step_begin(self, args, state, control, **kwargs):
        Profile.on_step_begin(self, args, state, control, **kwargs)
        original.on_step_begin(self, args, state, control, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        Profile.on_train_end(self, args, state, control, **kwargs)


result = train_studio(cfg, model, tokenizer, token_rows(spec, model.config.get_text_config().vocab_size), spec.warmup)
print("step seconds", result.step_seconds)
