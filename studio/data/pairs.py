"""Preference rows as they train: a prompt with a chosen and a rejected answer (dpo, orpo), or one answer
labelled good or bad (kto).

Each side is tokenized through the run's template exactly as SFT tokenizes a
conversation: the answer is the last assistant turn's trained tokens (its stop
token included), the prompt is everything before it. So the token preview of a
pair shows exactly what trains, and the prompt is never tokenized apart from its
answer (a token merged across the boundary cannot shift the two).
"""

from __future__ import annotations

from dataclasses import dataclass

from studio.data.formats import column_text, conversation_turns, preference_pair
from studio.data.files import Row
from studio.data.templates import Template, tokenize_conversation
from studio.errors import DataError

LABEL_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False,
               "good": True, "bad": False}


@dataclass(frozen=True)
class PairRow:
    """One preference pair as token ids: the shared prompt, then each answer (trained on both sides)."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    where: str = ""

    @property
    def sequences(self) -> tuple[list[int], ...]:
        """The token sequences the model reads for this row (to name it when training goes wrong)."""
        return self.prompt_ids + self.chosen_ids, self.prompt_ids + self.rejected_ids

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))

    def cut(self, max_length: int) -> "PairRow | None":
        """Both sides cut to max_length tokens; None when the prompt alone fills it (nothing left to compare)."""
        room = max_length - len(self.prompt_ids)
        if room <= 0:
            return None
        return PairRow(self.prompt_ids, self.chosen_ids[:room], self.rejected_ids[:room], self.where)


@dataclass(frozen=True)
class LabelledRow:
    """One answer to a prompt, labelled good (True) or bad (False): kto's unpaired examples."""

    prompt_ids: list[int]
    completion_ids: list[int]
    label: bool
    where: str = ""

    @property
    def sequences(self) -> tuple[list[int], ...]:
        return (self.prompt_ids + self.completion_ids,)

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)

    def cut(self, max_length: int) -> "LabelledRow | None":
        room = max_length - len(self.prompt_ids)
        if room <= 0:
            return None
        return LabelledRow(self.prompt_ids, self.completion_ids[:room], self.label, self.where)


def tokenize_pair(row: Row, tokenizer, template: Template) -> PairRow:
    chosen, rejected = preference_pair(row)
    prompt, chosen_ids = split_last_answer(tokenizer, template, chosen, row.where)
    rejected_prompt, rejected_ids = split_last_answer(tokenizer, template, rejected, row.where)
    if rejected_prompt != prompt:
        raise DataError(f"{row.where}: the chosen and the rejected conversations differ before their last answer; "
                        "a pair must share everything but that answer.")
    if chosen_ids == rejected_ids:
        raise DataError(f"{row.where}: the chosen and the rejected answers are the same: nothing to prefer.")
    return PairRow(prompt, chosen_ids, rejected_ids, row.where)


def tokenize_labelled(row: Row, tokenizer, template: Template) -> list[LabelledRow]:
    """A labelled row as one example; a preference pair as two (its chosen answer good, its rejected one bad)."""
    if "chosen" in row.fields:
        pair = tokenize_pair(row, tokenizer, template)
        return [LabelledRow(pair.prompt_ids, pair.chosen_ids, True, row.where),
                LabelledRow(pair.prompt_ids, pair.rejected_ids, False, row.where)]
    prompt, completion = split_last_answer(tokenizer, template, labelled_conversation(row), row.where)
    return [LabelledRow(prompt, completion, label_of(row), row.where)]


def labelled_conversation(row: Row) -> list[dict]:
    """prompt (a text or messages) followed by completion (a text or an assistant turn)."""
    prompt, completion = row.fields.get("prompt"), row.fields.get("completion")
    before = (conversation_turns(row, "prompt", prompt, needs_answer=False) if isinstance(prompt, list)
              else [{"role": "user", "content": column_text(row, "prompt")}])
    answer = (conversation_turns(row, "completion", completion, needs_answer=False) if isinstance(completion, list)
              else [{"role": "assistant", "content": column_text(row, "completion")}])
    if answer[-1]["role"] != "assistant":
        raise DataError(f"{row.where}: the completion must end with an assistant turn.")
    return before + answer


def label_of(row: Row) -> bool:
    value = row.fields.get("label")
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in LABEL_WORDS:
        return LABEL_WORDS[value.strip().lower()]
    raise DataError(f"{row.where}: label must be true or false (also 1/0, yes/no, good/bad), got {value!r}.")


def split_last_answer(tokenizer, template: Template, messages: list[dict], where: str) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids): the answer is the last assistant turn's trained tokens, the prompt all before."""
    row = tokenize_conversation(tokenizer, template, messages, "responses")
    end = max((i for i, on in enumerate(row.trained) if on), default=-1)
    if end < 0:
        raise DataError(f"{where}: the last answer is empty once tokenized.")
    start = end
    while start > 0 and row.trained[start - 1]:
        start -= 1
    return row.input_ids[:start], row.input_ids[start:end + 1]
