"""What the report card compares a GGUF with: greedy answers of the fine-tuned and the base model.

The card asks two questions of every GGUF: does it compute what the merged
weights compute, and did the fine-tune survive? The second needs the base
model's answers too: a prompt where base and fine-tuned answer alike says
nothing about the fine-tune. Prompts are a fixed set plus a few rows of the
run's own data (its eval rows, else its training rows), built with the run's
template, where the fine-tune is most likely to show.

Answers are computed once per export, so every GGUF type is compared with the
same references and no HF model stays in memory while llama.cpp runs.

    refs = reference_answers(cfg, merged_dir, template, n_tokens=16)
    refs.answers[0].tuned, refs.answers[0].base   # token ids, cut after the first stop token
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path

from studio.config import DataConfig, RunConfig
from studio.data.formats import load_rows, to_messages
from studio.errors import StudioError
from studio.hardware import free_accelerator_memory
from studio.models import load_model
from studio.data.templates import Template, prompt_ids, stop_token_ids

FIXED_PROMPTS = (
    "What is the capital of France?",
    "Give three tips for staying healthy.",
    "Write a short sentence about the sea.",
)
DATA_PROMPTS = 6  # rows of the run's data asked as well
READ_LIMIT = 5000  # records read to pick them (the whole file when smaller, so the shuffle is training's)


@dataclass(frozen=True)
class CardPrompt:
    source: str  # "fixed", or the row's file:line
    messages: list[dict]

    @property
    def text(self) -> str:
        return self.messages[-1]["content"]


@dataclass
class ReferenceAnswer:
    prompt: CardPrompt
    ids: list[int]  # the rendered prompt, as llama.cpp gets it too
    tuned: list[int]  # the fine-tuned (merged) model's greedy answer
    base: list[int]  # the base model's greedy answer (the same weights without the fine-tune)
    tuned_first_logits: object = field(repr=False)  # numpy array: the first step's logits, for the drift figure

    @property
    def informative(self) -> bool:
        """Base and fine-tuned answer differently: only here can a GGUF show which one it follows."""
        return self.tuned != self.base


@dataclass
class References:
    answers: list[ReferenceAnswer]
    stops: set[int]
    n_tokens: int  # the longest answer asked of each model
    tokenizer: object  # the merged model's tokenizer


def card_prompts(data: DataConfig, n_rows: int = DATA_PROMPTS) -> list[CardPrompt]:
    fixed = [CardPrompt("fixed", [{"role": "user", "content": text}]) for text in FIXED_PROMPTS]
    return fixed + data_prompts(data, n_rows)


def data_prompts(data: DataConfig, n_rows: int) -> list[CardPrompt]:
    """The prompts (conversation up to the last answer) of `n_rows` rows of the run's eval or training data."""
    try:
        loaded = load_rows(data, limit=READ_LIMIT, path=data.eval_path or None)
    except StudioError:  # the data moved or is unreachable since training: the fixed prompts still run
        return []
    if loaded.format == "text":
        return []  # raw text has no prompt to ask
    rows = list(loaded.rows)
    if not data.eval_path:
        # Training shuffles with this seed and holds out the head as the eval split.
        random.Random(data.shuffle_seed).shuffle(rows)
    prompts = []
    for row in rows:
        try:
            messages = to_messages(row, loaded.format)
        except StudioError:
            continue
        answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if answers and answers[-1] > 0 and messages[answers[-1] - 1]["role"] == "user":
            prompts.append(CardPrompt(row.where, messages[: answers[-1]]))
        if len(prompts) == n_rows:
            break
    return prompts


def reference_answers(cfg: RunConfig, merged: Path, template: Template, n_tokens: int) -> References:
    """Greedy answers of the merged fine-tuned model and of the run's base model on the card's prompts."""
    sixteen_bit = replace(cfg.model, load_in="16bit", dtype="auto")  # the run's opt-ins (own code, pickles) kept
    tuned_model, tokenizer = load_model(replace(sixteen_bit, name_or_path=str(merged)))
    stops = set(stop_token_ids(tokenizer))
    prompts = card_prompts(cfg.data)
    ids = [prompt_ids(tokenizer, template, p.messages) for p in prompts]
    tuned = [greedy(tuned_model, tokenizer, i, n_tokens, stops) for i in ids]
    del tuned_model
    free_accelerator_memory()
    # The base is loaded the way the merge loaded it, so these are the fine-tune's own weights without the adapter.
    base_model, _ = load_model(sixteen_bit)
    base = [greedy(base_model, tokenizer, i, n_tokens, stops)[0] for i in ids]
    del base_model
    free_accelerator_memory()
    answers = [ReferenceAnswer(p, i, t, b, logits) for p, i, (t, logits), b in zip(prompts, ids, tuned, base)]
    return References(answers, stops, n_tokens, tokenizer)


def greedy(model, tokenizer, ids: list[int], n_tokens: int, stops: set[int]):
    """(answer token ids cut after the first stop, first-step logits as a numpy array)."""
    import torch

    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids], device=model.device), max_new_tokens=n_tokens, do_sample=False,
            eos_token_id=sorted(stops), pad_token_id=tokenizer.pad_token_id, output_scores=True,
            return_dict_in_generate=True,
        )
    return until_stop(out.sequences[0, len(ids):].tolist(), stops), out.scores[0][0].float().cpu().numpy()


def until_stop(tokens: list[int], stops: set[int]) -> list[int]:
    for i, token in enumerate(tokens):
        if token in stops:
            return tokens[: i + 1]
    return tokens
