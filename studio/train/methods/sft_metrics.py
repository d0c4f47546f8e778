"""SFT batches that do not wait for the GPU for their metrics: these stay on the device until a log.

TRL's SFTTrainer reads entropy, token accuracy and the token count back to the
host after every batch, and gathers each across the processes. On CUDA each
read waits for the GPU to finish the batch, so the GPU then idles while the CPU
queues the next batch's kernels; with several GPUs each gather also makes every
GPU wait for the slowest. Here the loss is TRL's own, each batch's sums are kept
on the device, and a log (which waits for the GPU anyway, for the loss) adds
them up across the processes once and hands TRL's log the numbers it would
have averaged.

(transformers still reads the attention mask back once per forward pass, to
see whether it can be skipped, before any of the pass's work is queued.)

    trainer_class = sft_trainer_class()     # SFTTrainer with the metrics on the device
"""

from __future__ import annotations

import sys
from collections import defaultdict

import torch

from studio.speed.patches import TRL_CHECKED

# Each batch's sums, a row a batch: labelled positions, their entropy, the ones guessed right, tokens fed.
VALID, ENTROPY, CORRECT, TOKENS = range(4)


def sft_trainer_class():
    """TRL's SFTTrainer, its compute_loss without host reads (where TRL takes its plain path); TRL's own
    trainer under another TRL version, whose loss may have changed."""
    import trl
    from trl import SFTTrainer

    if trl.__version__ != TRL_CHECKED:
        print(f"Note: TRL {trl.__version__} is not the {TRL_CHECKED} the SFT loss was checked against; training "
              "uses TRL's own (its metrics read from the GPU after every batch, same results).", file=sys.stderr)
        return SFTTrainer

    class SFTTrainerMetricsOnDevice(SFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._device_sums: dict[str, list[torch.Tensor]] = defaultdict(list)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if return_outputs or not _plain_loss(self):  # return_outputs: TRL computes the logits too
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            inputs["use_cache"] = False
            outputs = model(**inputs, fused_lm_head=True)
            # TRL's loss, line for line: the mean over the labelled tokens (all processes' when given).
            per_token_loss = -outputs.log_probs  # zero on ignored positions
            if self.args.loss_type == "dft":
                per_token_loss = per_token_loss * outputs.log_probs.exp().detach()
            num_tokens = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
            loss = per_token_loss.sum() / torch.as_tensor(num_tokens).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
            sums = torch.stack([outputs.label_mask.sum().float(), outputs.entropy.detach().sum().float(),
                                outputs.is_top1.sum().float(), _tokens_fed(inputs).float()])
            self._device_sums[self._mode()].append(sums if _counted(self.accelerator) else torch.zeros_like(sums))
            return loss

        def log(self, logs, start_time=None):
            for mode in ("train", "eval"):  # every process, in the same order; train first: eval logs its tokens
                self._read_batch_sums(mode)
            super().log(logs, start_time)

        def _mode(self) -> str:
            return "train" if self.model.training else "eval"

        def _read_batch_sums(self, mode: str) -> None:
            """Each batch's sums, added across the processes in one exchange, into TRL's metric lists."""
            sums = self._device_sums[mode]
            if not sums:
                return
            rows = self.accelerator.reduce(torch.stack(sums), reduction="sum").tolist()
            sums.clear()
            for row in rows:
                valid = row[VALID]
                self._metrics[mode]["entropy"].append(row[ENTROPY] / valid if valid > 0 else 0.0)
                self._metrics[mode]["mean_token_accuracy"].append(row[CORRECT] / valid if valid > 0 else 0.0)
                if mode == "train":
                    self._total_train_tokens += int(row[TOKENS]) // self._tp_size
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

    SFTTrainerMetricsOnDevice.__name__ = SFTTrainer.__name__
    return SFTTrainerMetricsOnDevice


def _plain_loss(trainer) -> bool:
    """TRL's compute_loss takes its plain path: no custom loss, label smoothing, MoE aux loss or sequence parallelism."""
    parallelism = getattr(trainer.accelerator, "parallelism_config", None)
    return (trainer.compute_loss_func is None and trainer.label_smoother is None and not trainer.aux_loss_enabled
            and not getattr(parallelism, "sp_enabled", False))


def _counted(accelerator) -> bool:
    """Whether this process's batch counts in the metrics. The last batch of a dataloader that does not
    divide among the processes is made whole with repeated rows; TRL's gather_for_metrics keeps the
    first `remainder` processes' values there, and so does this."""
    state = accelerator.gradient_state
    return not (accelerator.num_processes > 1 and state.end_of_dataloader and state.remainder > 0
                and accelerator.process_index >= state.remainder)


def _tokens_fed(inputs: dict) -> torch.Tensor:
    """The batch's tokens, padding not counted, as TRL counts them (the mask; packed rows: their length)."""
    ids = inputs["input_ids"]
    if "attention_mask" in inputs:
        return inputs["attention_mask"].sum()
    if "position_ids" in inputs:
        return ids.new_full((), inputs["position_ids"].size(1))  # made on the device: no copy to wait for
    return ids.new_full((), ids.numel())  # no mask: no padding
