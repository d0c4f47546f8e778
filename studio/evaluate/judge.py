"""A pairwise judge: a chat model the user picks says which of two models answered each row better.

Each row is put to the judge twice, the answers' places swapped. A judge that
prefers a place (always "A") rather than an answer then disagrees with itself,
and the agreement rate says how much its preferences are worth. The judge's
choice is read from its next-token scores for "A" and "B" after its own chat
template's generation prompt: no sampling, no answer to parse.

    judge = Judge.load("path/to/chat-model")
    judgement = judge.compare(rows, first=("fine-tuned", outputs_a), second=("base", outputs_b))
    judgement.summary()   # "Judge qwen: fine-tuned preferred on 9 of 12 rows, base on 1; 2 split (agreement 83%)."
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from studio.errors import ConfigError

QUESTION = (
    "Two assistants answered the same request. Which answer is better: more correct, more helpful{reference_hint}? "
    "Reply with the single letter A or B.\n\n"
    "Request:\n{request}\n\n{reference}Answer A:\n{a}\n\nAnswer B:\n{b}"
)
# Below this agreement between the two orders the judge mostly picked a place, not an answer.
AGREEMENT_WARNING = 0.6


@dataclass(frozen=True)
class Judgement:
    """The judge's verdict per row, asked in both orders: "first" or "second" (which model's answer it chose)."""

    judge: str
    first: str
    second: str
    verdicts: list[tuple[str, str]] = field(default_factory=list)  # (first answer shown as A, second shown as A)

    @property
    def rows(self) -> int:
        return len(self.verdicts)

    @property
    def first_wins(self) -> int:
        return sum(a == b == "first" for a, b in self.verdicts)

    @property
    def second_wins(self) -> int:
        return sum(a == b == "second" for a, b in self.verdicts)

    @property
    def split(self) -> int:
        """Rows where the judge changed its choice when the answers swapped places."""
        return sum(a != b for a, b in self.verdicts)

    @property
    def agreement(self) -> float:
        return 1 - self.split / self.rows if self.rows else 0.0

    def summary(self) -> str:
        return (f"Judge {self.judge}: {self.first} preferred on {self.first_wins} of {self.rows} rows, {self.second} "
                f"on {self.second_wins}; {self.split} split (the choice changed when the answers swapped places: "
                f"agreement {self.agreement:.0%}).")

    def warning(self) -> str | None:
        if self.rows and self.agreement < AGREEMENT_WARNING:
            return (f"The judge agreed with itself on only {self.agreement:.0%} of rows once the answers swapped "
                    "places: it mostly picks a position, so its preferences say little. A larger chat model as "
                    "judge may help.")
        return None

    def to_json(self) -> dict:
        return {**asdict(self), "first_wins": self.first_wins, "second_wins": self.second_wins, "split": self.split,
                "agreement": self.agreement}


class Judge:
    """A chat model asked "A or B?", answering through its own chat template."""

    def __init__(self, name: str, model, tokenizer) -> None:
        require_chat_template(name, tokenizer)
        self.name, self.model, self.tokenizer = name, model.eval(), tokenizer
        self.letters = {letter: _letter_ids(tokenizer, letter) for letter in "AB"}

    @classmethod
    def load(cls, name_or_path: str) -> "Judge":
        from studio.config import ModelConfig
        from studio.models import load_model

        model, tokenizer = load_model(ModelConfig(name_or_path=name_or_path))
        return cls(name_or_path.rstrip("/").rsplit("/", 1)[-1], model, tokenizer)

    def close(self) -> None:
        from studio.hardware import free_accelerator_memory

        del self.model
        free_accelerator_memory()

    def prefers_a(self, request: str, reference: str, a: str, b: str) -> bool:
        """Whether the judge's next token is more likely "A" than "B"."""
        import torch

        text = QUESTION.format(request=request, a=a, b=b,
                               reference=f"Reference answer:\n{reference}\n\n" if reference else "",
                               reference_hint=", closer to the reference answer" if reference else "")
        ids = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                 tokenize=True, return_dict=False)
        with torch.no_grad():
            logits = self.model(torch.tensor([list(ids)], device=self.model.device)).logits[0, -1].float()
        return max(logits[i] for i in self.letters["A"]) > max(logits[i] for i in self.letters["B"])

    def compare(self, rows: Sequence, first: tuple[str, Sequence[str]], second: tuple[str, Sequence[str]],
                stop: threading.Event | None = None,
                progress: Callable[[int, int], None] = lambda done, total: None) -> Judgement:
        """The judge's choice between `first` and `second` (name, answers) on every row, in both orders."""
        (first_name, first_answers), (second_name, second_answers) = first, second
        verdicts = []
        total = min(len(rows), len(first_answers), len(second_answers))
        for index in range(total):
            if stop is not None and stop.is_set():
                break
            row, one, two = rows[index], first_answers[index], second_answers[index]
            shown_first = "first" if self.prefers_a(row.input_text, row.reference, one, two) else "second"
            shown_second = "second" if self.prefers_a(row.input_text, row.reference, two, one) else "first"
            verdicts.append((shown_first, shown_second))
            progress(index + 1, total)
        return Judgement(self.name, first_name, second_name, verdicts)


def require_chat_template(name: str, tokenizer) -> None:
    """A judge answers through its own chat template: a base model has none to ask it with."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"The judge must be a chat model, and {name} has no chat template (a base model). "
                          "Pick an instruct or chat model.")


def _letter_ids(tokenizer, letter: str) -> list[int]:
    """The token ids that spell the letter as a whole token ("A", and " A" where the tokenizer has one)."""
    ids = {encoded[0] for text in (letter, " " + letter)
           if len(encoded := tokenizer.encode(text, add_special_tokens=False)) == 1}
    if not ids:
        raise ConfigError(f"The judge's tokenizer has no single token for {letter!r}: pick another judge model.")
    return sorted(ids)
