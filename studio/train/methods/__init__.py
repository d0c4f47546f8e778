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
    galore.py      galore: sft of every weight with GaLore's low-rank optimizer
    grpo.py        grpo: the model's own completions of prompts, scored by rewards (studio.train.rewards)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from studio.data.building import LABELLED, PAIRS, PROMPTS, SEQUENCES, RowShape
from studio.train.methods import galore, grpo, preference, sft


@dataclass(frozen=True)
class Method:
    name: str
    shape: RowShape
    # (cfg, output_dir, model, tokenizer, train_dataset, eval_dataset, callbacks, **options) -> a transformers Trainer
    make_trainer: Callable
    curves: tuple[str, ...] = ()  # logged values plotted beside the loss, e.g. "rewards/margins" ("rewards/": all under it)
    summary: str = ""  # what it trains, in a line
    settings: str = ""  # the config section of its own settings, e.g. "preference"
    rewarded: bool = False  # its progress shows in the reward, not the loss (the health check follows the reward)


REWARD_CURVES = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")

METHODS = {
    m.name: m for m in (
        Method("sft", SEQUENCES, sft.make_trainer, (), "learns the responses of instruction or chat rows"),
        Method("dpo", PAIRS, preference.make_dpo_trainer, REWARD_CURVES,
               "prefers the chosen over the rejected answer, against the model before training", "preference"),
        Method("orpo", PAIRS, preference.make_orpo_trainer,
               ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "log_odds_ratio"),
               "learns the chosen answer and penalises the rejected one's odds", "preference"),
        Method("kto", LABELLED, preference.make_kto_trainer, ("rewards/chosen", "rewards/rejected", "kl"),
               "raises good answers and lowers bad ones, each on its own", "preference"),
        Method("galore", SEQUENCES, galore.make_trainer, (),
               "sft of every weight with low-rank optimizer states (GaLore)", "galore"),
        # The objective is sft's; what trains is the learned prompt attached when the model is loaded.
        Method("prefix", SEQUENCES, sft.make_trainer, (), "sft of learned key/values before every layer (P-Tuning v2)",
               "prompt_tuning"),
        Method("ptuning", SEQUENCES, sft.make_trainer, (), "sft of learned input embeddings (P-Tuning)",
               "prompt_tuning"),
        Method("grpo", PROMPTS, grpo.make_trainer, grpo.CURVES,
               "writes several completions of each prompt and learns from the ones the rewards score higher",
               settings="grpo", rewarded=True),
    )
}


def method_for(name: str) -> Method:
    return METHODS[name]


def settings_sections() -> dict[str, tuple[str, ...]]:
    """Each method settings section, and the methods that use it: {"preference": ("dpo", "orpo", "kto"), ...}."""
    sections: dict[str, tuple[str, ...]] = {}
    for method in METHODS.values():
        if method.settings:
            sections[method.settings] = (*sections.get(method.settings, ()), method.name)
    return sections
