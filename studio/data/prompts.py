"""Prompts as grpo trains on them: the prompt rendered through the run's template up to the model's turn, and
what the rewards read beside it (the answer, the row's other columns).

A prompt row holds a `prompt` (a text, or a list of messages ending before the
model's turn) and any other columns: each goes to the reward functions under its
own name (an answer, a difficulty, test cases ...; lists and objects as JSON
text). Instruction, chat, prompt/completion and preference rows serve too:
everything before their last answer is the prompt, and that answer (the chosen
one of a pair) is the row's `answer`.

The prompt is rendered with the template's generation prompt and tokenized as
chat and every export tokenize it, so the token preview is exactly what the
model is asked.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from studio.data.formats import column_text, conversation_turns, to_messages
from studio.data.files import Row
from studio.data.templates import Template, render, rendered_ids
from studio.errors import DataError

# Names the trainer passes to reward functions itself (TRL's GRPOTrainer), and the column naming each row's
# source: a data column of one of these names is left out.
WHERE_COLUMN = "file_line"
RESERVED = {"prompt", "prompts", "completion", "completions", "completion_ids", "trainer_state", "log_extra",
            "log_metric", "environments", WHERE_COLUMN}


@dataclass(frozen=True)
class PromptRow:
    """One prompt: its rendered text and token ids, and the values the rewards read beside it."""

    text: str  # the prompt as the template renders it, up to where the model answers
    prompt_ids: list[int]
    columns: dict  # name -> value (text, number, bool or None), e.g. {"answer": "42"}
    where: str = ""

    @property
    def sequences(self) -> tuple[list[int], ...]:
        return (self.prompt_ids,)

    @property
    def length(self) -> int:
        return len(self.prompt_ids)

    def cut(self, max_length: int) -> "PromptRow | None":
        """The row itself, or None when the prompt is longer than max_length: a cut prompt asks something else."""
        return self if len(self.prompt_ids) <= max_length else None


def tokenize_prompt(row: Row, fmt: str, tokenizer, template: Template) -> PromptRow:
    if fmt == "prompts":
        messages, columns = prompt_messages(row), _reward_columns(row)
    else:
        conversation = to_messages(row, fmt)
        last = max(i for i, m in enumerate(conversation) if m["role"] == "assistant")
        messages, columns = conversation[:last], {"answer": conversation[last]["content"]}
        if not messages:
            raise DataError(f"{row.where}: the conversation starts with the answer: there is no prompt before it.")
    text = render(tokenizer, template, messages, add_generation_prompt=True)
    return PromptRow(text, rendered_ids(tokenizer, text), columns, row.where)


def prompt_messages(row: Row) -> list[dict]:
    prompt = row.fields.get("prompt")
    if isinstance(prompt, list):
        messages = conversation_turns(row, "prompt", prompt, needs_answer=False)
    else:
        messages = [{"role": "user", "content": column_text(row, "prompt")}]
    if messages[-1]["role"] == "assistant":
        raise DataError(f"{row.where}: the prompt ends with an assistant turn; a grpo prompt ends where the model "
                        "answers.")
    return messages


def _reward_columns(row: Row) -> dict:
    """The row's other columns as the rewards read them: text, numbers and booleans as they are, others as JSON."""
    out = {}
    for name, value in row.fields.items():
        if name in RESERVED:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            value = None  # a missing value in a table
        elif value is not None and not isinstance(value, (str, int, float, bool)):
            value = json.dumps(value, ensure_ascii=False)
        out[str(name)] = value
    return out


def prompt_columns(rows: list[PromptRow]) -> dict[str, list]:
    """The dataset TRL's GRPOTrainer reads: the prompt text, where each row comes from, and the reward columns.

    A column whose values differ in type from row to row (a number here, a text there) is given as text.
    """
    names = list(dict.fromkeys(name for r in rows for name in r.columns))
    out = {"prompt": [r.text for r in rows], WHERE_COLUMN: [r.where for r in rows]}
    for name in names:
        values = [r.columns.get(name) for r in rows]
        kinds = {_kind(v) for v in values if v is not None}
        out[name] = [None if v is None else str(v) for v in values] if len(kinds) > 1 else values
    return out


def _kind(value) -> str:
    if isinstance(value, bool):
        return "bool"
    return "number" if isinstance(value, (int, float)) else "text"
