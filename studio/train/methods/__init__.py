"""Training methods: each one is a TRL trainer set up as the studio trains, behind one interface.

    method = method_for(cfg.train.method)
    built = build_dataset(cfg.data, tokenizer, template, max_length, method.shape, method.name)
    trainer = method.make_trainer(cfg, output_dir, model, tokenizer, train_dataset, eval_dataset, callbacks)

A method names the shape of row it trains on (studio.data.building), builds
its trainer from the run's config, and names the values it logs beside the
loss, which the Train tab plots live and the CLI prints.

    arguments.py   the trainer options every method shares (batch, schedule, optimizer, precision, saving)
    sft.py         sft: the responses of instruction and chat rows
    preference.py  dpo, orpo, kto: preference pairs and labelled answers
    grpo.py        grpo: the model's own completions of prompts, scored by rewards (studio.train.rewards)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from studio.data.building import LABELLED, PAIRS, PROMPTS, SEQUENCES, RowShape
from studio.train.methods import grpo, preference, sft


@dataclass(frozen=True)
class Method:
    name: str
    shape: RowShape
    # (cfg, output_dir, model, tokenizer, train_dataset, eval_dataset, callbacks, **options) -> a transformers Trainer
    make_trainer: Callable
    curves: tuple[str, ...] = ()  # logged values plotted beside the loss, e.g. "rewards/margins" ("rewards/": all under it)
    summary: str = ""  # what it trains, in a line
    rewarded: bool = False  # its progress shows in the reward, not the loss (the health check follows the reward)


REWARD_CURVES = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")

METHODS = {
    m.name: m for m in (
        Method("sft", SEQUENCES, sft.make_trainer, (), "learns the responses of instruction or chat rows"),
        Method("dpo", PAIRS, preference.make_dpo_trainer, REWARD_CURVES,
               "prefers the chosen over the rejected answer, against the model before training"),
        Method("orpo", PAIRS, preference.make_orpo_trainer,
               ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "log_odds_ratio"),
               "learns the chosen answer and penalises the rejected one's odds"),
        Method("kto", LABELLED, preference.make_kto_trainer, ("rewards/chosen", "rewards/rejected", "kl"),
               "raises good answers and lowers bad ones, each on its own"),
        Method("grpo", PROMPTS, grpo.make_trainer, grpo.CURVES,
               "writes several completions of each prompt and learns from the ones the rewards score higher",
               rewarded=True),
    )
}


def method_for(name: str) -> Method:
    return METHODS[name]
