"""What the model will train on: one row token by token, and length statistics.

    p = preview_dataset(cfg.data, tokenizer, template, max_length=1024, row=0)
    p.tokens      # [(piece, trained, special), ...] for row 0, as training sees it
    p.lengths     # token length of every row (sampled for big files)
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from studio.config import DataConfig
from studio.data import load_rows, tokenize_row
from studio.templates import Template

STATS_SAMPLE = 2000  # rows tokenized for the statistics of a big file


@dataclass(frozen=True)
class DataPreview:
    format: str
    rows: int
    columns: list[str]
    row: int
    text: str
    tokens: list[tuple[str, bool, bool]]
    lengths: list[int]
    max_length: int
    template: str

    @property
    def cut(self) -> int:
        return sum(n > self.max_length for n in self.lengths)

    @property
    def trained_tokens(self) -> int:
        return sum(trained for _, trained, _ in self.tokens)


def preview_dataset(cfg: DataConfig, tokenizer, template: Template, max_length: int, row: int = 0) -> DataPreview:
    rows, fmt = load_rows(cfg)
    row = max(0, min(row, len(rows) - 1))
    shown = tokenize_row(rows[row], fmt, tokenizer, template, cfg.train_on)
    specials = set(tokenizer.all_special_ids)
    tokens = [(tokenizer.decode([t]), bool(on), t in specials) for t, on in zip(shown.input_ids, shown.trained)]
    sample = rows if len(rows) <= STATS_SAMPLE else random.Random(0).sample(rows, STATS_SAMPLE)
    lengths = [len(tokenize_row(r, fmt, tokenizer, template, cfg.train_on).input_ids) for r in sample]
    return DataPreview(fmt, len(rows), sorted(rows[0].fields), row, shown.text, tokens, lengths, max_length,
                       template.name)
