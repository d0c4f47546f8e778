"""sft: supervised fine-tuning through TRL's SFTTrainer, on rows the studio has tokenized and masked."""

from __future__ import annotations

from pathlib import Path

from studio.config import RunConfig
from studio.speed.embeddings import EmbeddingsInCpuMemory, feed_cpu_ids
from studio.train.methods.arguments import finish_trainer, shared_options
from studio.train.methods.sft_metrics import sft_trainer_class


def make_trainer(cfg: RunConfig, output_dir: Path, model, tokenizer, train_dataset, eval_dataset=None,
                 callbacks=(), **overrides):
    """TRL's SFTTrainer as the studio trains.

    `train_dataset` holds finished rows (input_ids, labels). `overrides` replace
    SFTConfig fields (the benchmark turns saving off, for instance).
    """
    from trl import SFTConfig

    t = cfg.train
    options = shared_options(cfg, output_dir, eval_dataset is not None)
    options.update(
        max_length=t.max_length,
        packing=t.packing,
        activation_checkpointing_kwargs={"use_reentrant": False, "selective": t.selective_checkpointing},
        # Rows arrive tokenized, masked (labels) and cut to max_length by studio.data.building: the
        # preview shows exactly what trains, and TRL has nothing left to redo.
        dataset_kwargs={"skip_prepare_dataset": True},
    )
    options.update(overrides)
    trainer = sft_trainer_class()(model=model, args=SFTConfig(**options), train_dataset=train_dataset,
                                  eval_dataset=eval_dataset, processing_class=tokenizer, callbacks=list(callbacks))
    if isinstance(model.get_input_embeddings(), EmbeddingsInCpuMemory):
        trainer.data_collator = feed_cpu_ids(trainer.model, trainer.data_collator)
    return finish_trainer(trainer, cfg)
