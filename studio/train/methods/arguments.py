"""The trainer options every method shares, decided in one place from the run's config."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PrinterCallback

from studio.config import RunConfig
from studio.config_rules import optimizer_for
from studio.errors import TrainingError
from studio.hardware import has_cuda, parallel_engine, resolve_dtype, sharded_training, split_states, world_size
from studio.speed.offload_inputs import OffloadLayerInputs, offloads_layer_inputs
from studio.speed.patches import TRL_CHECKED, cuda_speedups, offload_keeping_the_memory_cache
from studio.train.sharding import keep_packed_weights_intact


def shared_options(cfg: RunConfig, output_dir: Path, has_eval: bool) -> dict:
    """TrainingArguments fields that mean the same for every TRL trainer the studio uses."""
    t = cfg.train
    dtype = resolve_dtype(cfg.model.dtype)
    return dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        max_steps=t.max_steps if t.max_steps > 0 else -1,
        num_train_epochs=t.epochs,
        learning_rate=t.learning_rate,
        warmup_steps=t.warmup_steps,
        lr_scheduler_type=t.scheduler,
        optim=optimizer_name(t.optimizer),
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        # Sharded training too: FSDP's own checkpoint wrapper renames every layer it wraps, and PEFT then
        # finds none of the adapter's tensors in the gathered weights (it saved an empty adapter).
        activation_checkpointing=t.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
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
        # A non-finite loss must reach the health check as it is: the trainer would otherwise
        # log the average of earlier losses in its place (0.0 right after a log).
        logging_nan_inf_filter=False,
        # The trainer's own count waits for the GPU after every batch; callbacks.TrainedTokens counts.
        include_num_input_tokens_seen="no",
        dataloader_num_workers=0,
        **cuda_speedups(cfg),
        **parallel_options(),
    )


def parallel_options() -> dict:
    """How the processes of a several-device run share the work (none when training alone).

    ddp: every process holds the model and averages its gradients with the others after each
    step's rows (gloo between CPU processes, NCCL between GPUs). fsdp: FSDP2 shards each decoder
    layer's weights, gradients and optimizer states across the GPUs (checkpointed by transformers, as
    on one device: shared_options). deepspeed-zero2 / -zero3: DeepSpeed ZeRO shards the optimizer states
    and gradients (zero3: the weights too).
    """
    if world_size() == 1:
        return {}
    if parallel_engine().startswith("deepspeed"):
        return {"deepspeed": deepspeed_config(parallel_engine())}
    if not sharded_training():
        # LoRA leaves most parameters without gradients: DDP need not search for unused ones. A causal
        # LM's buffers (rotary frequencies) never change in training, so DDP need not broadcast them
        # from the first process before every forward pass, which would hold each GPU up for the other.
        return {"ddp_backend": None if has_cuda() else "gloo", "ddp_find_unused_parameters": False,
                "ddp_broadcast_buffers": False}
    return {"fsdp": True, "fsdp_config": {
        "version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "reshard_after_forward": True,
        "cpu_ram_efficient_loading": True, "state_dict_type": "FULL_STATE_DICT",
    }}


def deepspeed_config(engine: str) -> dict:
    """DeepSpeed's config for deepspeed-zero2 or -zero3: the batch, precision and clipping come from the
    trainer's own settings ("auto"); zero3 gathers the whole weights when the trainer saves them."""
    zero = {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True} if engine.endswith("3") else {"stage": 2}
    return {"zero_optimization": zero, "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
            "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
            "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"}}


def optimizer_name(setting: str) -> str:
    """transformers' name of the optimizer train.optimizer stands for (config_rules.optimizer_for decides auto)."""
    # bitsandbytes' 8-bit states cannot follow sharded weights, and ZeRO shards the states itself: AdamW.
    name = optimizer_for(setting, has_cuda() and not split_states())
    return {"adamw_8bit": "adamw_bnb_8bit"}.get(name, name)


def check_trl_method(trainer_class, method: str) -> None:
    """Refuse to train when TRL is not the version checked and `trainer_class.method`, which is replaced, is gone."""
    import trl

    if trl.__version__ != TRL_CHECKED and method not in vars(trainer_class):
        raise TrainingError(
            f"TRL {trl.__version__} is installed, but the studio's {trainer_class.__name__} setup was checked against "
            f"TRL {TRL_CHECKED}, and {trainer_class.__name__}.{method} is gone. Install the pinned versions: "
            "pip install -r requirements.txt."
        )


def finish_trainer(trainer, cfg: RunConfig):
    """What every trainer needs once built: progress goes through the studio's callbacks, not printed;
    checkpointed layer inputs wait in CPU memory (train.offload_layer_inputs); activation offload keeps the
    GPU memory cache between steps; sharded 4-bit weights are gathered intact."""
    trainer.remove_callback(PrinterCallback)
    if offloads_layer_inputs(cfg, has_cuda()):
        trainer.add_callback(OffloadLayerInputs())
    offload_keeping_the_memory_cache(trainer)
    if sharded_training():
        keep_packed_weights_intact(trainer)
    return trainer
