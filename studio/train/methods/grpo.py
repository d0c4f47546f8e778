"""grpo: group relative policy optimization through TRL's GRPOTrainer, on prompts the studio has rendered.

Each step the model writes grpo.num_generations completions of every prompt,
the rewards (studio.train.rewards) score them, and the model learns to make the
better completions of each group likelier. With grpo.beta > 0 a KL term keeps it
near the model before training: with LoRA, the same weights with the adapter
switched off (no second copy in memory).

Prompts arrive rendered through the run's template (studio.data.prompts): the
text the token preview shows. TRL would tokenize that text again with the
tokenizer's own special tokens (a second BOS on templates that write one), so
its prompt tokenization is replaced by the studio's, which reads rendered text
as chat and every export read it. That replaces a private method of TRL's
trainer, so it is checked against the TRL version it was read in.
"""

from __future__ import annotations

from pathlib import Path

from studio.config import RunConfig
from studio.data.prompts import WHERE_COLUMN
from studio.data.templates import END_OF_TURN_TOKENS, rendered_ids, stop_token_ids
from studio.errors import ConfigError
from studio.train.callbacks import SAMPLES_KEY
from studio.train.methods.arguments import check_trl_method, finish_trainer, shared_options
from studio.train.rewards import reward_set

CURVES = ("reward", "reward_std", "rewards/", "frac_reward_zero_std", "completions/mean_length",
          "completions/clipped_ratio", "kl", "entropy")


def make_trainer(cfg: RunConfig, output_dir: Path, model, tokenizer, train_dataset, eval_dataset=None,
                 callbacks=(), **overrides):
    """TRL's GRPOTrainer as the studio trains: prompts as rendered, checked rewards, samples in the logs.

    `train_dataset` holds the PROMPTS shape's columns (studio.data.building): the
    rendered prompt, where the row comes from, and the columns the rewards read.
    """
    from trl import GRPOConfig, GRPOTrainer

    check_trl_method(GRPOTrainer, "_tokenize_prompts")
    g = cfg.grpo
    # A completion ends at an end-of-turn token of the template as well as at EOS (Gemma's <end_of_turn>):
    # TRL stops generating, and cuts the completion, at the model's eos ids.
    model.generation_config.eos_token_id = stop_token_ids(tokenizer)
    # An end-of-turn marker left in a decoded completion is one the vocabulary spells as text (<|im_end|> on a
    # Llama tokenizer): the rewards see the completion without it, as chat shows it.
    rewards = reward_set(g, markers=list(END_OF_TURN_TOKENS))
    _check_columns(cfg, train_dataset, [n for n in rewards.names if n == "answer_match"])

    class StudioGRPOTrainer(GRPOTrainer):
        def _tokenize_prompts(self, prompts: list):
            return [rendered_ids(self._tokenizer, text) for text in prompts], None, {}

        def log(self, logs: dict, start_time: float | None = None) -> None:
            if self.model.training and "loss" in logs:
                logs[SAMPLES_KEY] = rewards.samples()  # a few completions for the live view (studio callbacks)
            super().log(logs, start_time)
            if self.state.log_history:
                self.state.log_history[-1].pop(SAMPLES_KEY, None)  # the events keep them, not trainer_state.json

    options = shared_options(cfg, output_dir, eval_dataset is not None)
    options.update(
        num_generations=g.num_generations, max_completion_length=g.max_completion_length,
        temperature=g.temperature, beta=g.beta, reward_weights=rewards.weights,
        **overrides,
    )
    trainer = StudioGRPOTrainer(model=model, reward_funcs=rewards.functions, args=GRPOConfig(**options),
                                train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=tokenizer,
                                callbacks=list(callbacks))
    if "ref" in getattr(trainer.model, "peft_config", {}):
        # TRL copies the adapter as the KL reference; a new adapter equals the base model, so the adapter
        # switched off is the same reference without a second adapter to hold or save.
        trainer.model.delete_adapter("ref")
    return finish_trainer(trainer, cfg)


def _check_columns(cfg: RunConfig, dataset, needing_answer: list[str]) -> None:
    """answer_match needs its column in the data; say which columns there are when it is missing."""
    column = cfg.grpo.answer_column
    if needing_answer and column not in dataset.column_names:
        have = [c for c in dataset.column_names if c not in ("prompt", WHERE_COLUMN)]
        raise ConfigError(
            f"grpo.rewards has answer_match, which compares completions with the data column {column!r}, but "
            f"{cfg.data.path} has no such column ({'its other columns: ' + ', '.join(have) if have else 'only prompts'}"
            "). Set grpo.answer_column to the column holding the answers, or leave answer_match out.")

