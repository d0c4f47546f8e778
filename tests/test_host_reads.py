"""SFT batches that never read a value back from the device: on CUDA each read waits for the GPU.

The reads are counted where they happen on any device (a tensor's item(), bool,
tolist ...) while the trainer runs a batch (forward and backward), on the CPU:
the same calls wait for the GPU on CUDA. TRL's own SFTTrainer, trained the same
way, is the check that the count can fail, and the reference for the loss and
the logged metrics.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest
import torch
from conftest import tiny_config, train_tiny

from studio.events import read_events

READS = ("item", "tolist", "__bool__", "__float__", "__int__", "nonzero", "cpu", "numpy")
# SGD: torch's Adam reads its step count, which it keeps on the CPU.
STEPS = ("train.optimizer=sgd", "train.max_steps=6", "train.logging_steps=3", "train.save_steps=100")


def _train(tiny_llama, tmp_path, monkeypatch, trainer: str, *overrides: str):
    """Train; return the run, the reads made inside the trainer's batches and the trainer's log dicts."""
    import transformers
    import trl

    from studio.train.methods import sft

    if trainer == "trl":
        monkeypatch.setattr(sft, "sft_trainer_class", lambda: trl.SFTTrainer)
    in_batch, reads, logs = [False], [], []

    def counting(name):
        read = getattr(torch.Tensor, name)

        def counted(self, *args, **kwargs):
            if in_batch[0]:
                caller = traceback.extract_stack(limit=2)[0]
                reads.append(f"{name} in {Path(caller.filename).name}:{caller.lineno}")
            return read(self, *args, **kwargs)
        return counted

    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    training_step = trl.SFTTrainer.training_step

    def batch(self, *args, **kwargs):
        in_batch[0] = True
        try:
            return training_step(self, *args, **kwargs)
        finally:
            in_batch[0] = False

    monkeypatch.setattr(trl.SFTTrainer, "training_step", batch)
    log = transformers.Trainer.log
    monkeypatch.setattr(transformers.Trainer, "log", lambda self, entry, *a: (logs.append(dict(entry)), log(self, entry, *a)))
    result = train_tiny(tiny_config(tiny_llama, *overrides), tmp_path / trainer)
    assert result.state == "completed", result
    return result.run_dir, reads, [entry for entry in logs if "loss" in entry]


@pytest.mark.parametrize("trainer, reads_in_batches", [("studio", False), ("trl", True)])
def test_sft_batches_read_nothing_back_from_the_device(tiny_llama, tmp_path, monkeypatch, trainer, reads_in_batches):
    _, reads, _ = _train(tiny_llama, tmp_path, monkeypatch, trainer, *STEPS)
    # Left: transformers' look at the attention mask (can it be skipped?) at the start of each forward pass.
    # TRL's own: its metrics after every batch.
    assert bool([read for read in reads if "masking_utils.py" not in read]) == reads_in_batches, reads


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_sft_losses_and_metrics_are_trls(tiny_llama, tmp_path, monkeypatch, grad_accum):
    overrides = (*STEPS, f"train.grad_accum={grad_accum}")
    studio_run, _, studio_logs = _train(tiny_llama, tmp_path, monkeypatch, "studio", *overrides)
    monkeypatch.undo()
    trl_run, _, trl_logs = _train(tiny_llama, tmp_path, monkeypatch, "trl", *overrides)

    def losses(run):
        return [e.loss for e in read_events(run / "events.jsonl") if e.kind == "log"]

    assert len(losses(studio_run)) == 2 and losses(studio_run) == losses(trl_run)
    assert len(studio_logs) == len(trl_logs) == 2
    for ours, theirs in zip(studio_logs, trl_logs):
        for key in ("entropy", "mean_token_accuracy", "num_tokens"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-5), (key, ours, theirs)


def test_another_trl_version_trains_with_trls_own_sft_trainer(monkeypatch, capsys):
    import trl

    from studio.train.methods.sft_metrics import sft_trainer_class

    assert sft_trainer_class() is not trl.SFTTrainer
    monkeypatch.setattr(trl, "__version__", "9.0.0")
    assert sft_trainer_class() is trl.SFTTrainer
    assert "TRL 9.0.0 is not the 1.16.0 the SFT loss was checked against" in capsys.readouterr().err
