"""What the model will train on: one row token by token, and statistics over the rows.

    p = preview_dataset(cfg.data, tokenizer, template, max_length=1024, row=0)
    p.tokens      # [(piece, trained, special), ...] for row 0, as training sees it
    p.lengths     # token length of every row (a sample of a big file)
    p.stats       # rows, tokens, trained tokens, rows cut, responses cut, empty and duplicate rows

Run as:  python launch.py data recipes/quickstart.yaml [--row N]
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from studio.config import DataConfig
from studio.data import load_rows, tokenize_row
from studio.templates import Template, template_warnings

STATS_SAMPLE = 2000  # rows tokenized for the statistics of a big file


@dataclass(frozen=True)
class DataStats:
    rows: int  # rows counted (all, or the sample)
    sampled: bool
    tokens: int
    trained_tokens: int
    rows_cut: int  # longer than max_length
    responses_cut: int  # of those, rows that lose trained (response) tokens
    fully_masked: int  # rows with nothing left to learn once cut to max_length (training drops them)
    duplicates: int  # rows whose rendered text appeared before


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
    stats: DataStats
    warnings: list[str]

    @property
    def trained_tokens(self) -> int:
        return sum(trained for _, trained, _ in self.tokens)


def preview_dataset(cfg: DataConfig, tokenizer, template: Template, max_length: int, row: int = 0) -> DataPreview:
    rows, fmt = load_rows(cfg)
    row = max(0, min(row, len(rows) - 1))
    shown = tokenize_row(rows[row], fmt, tokenizer, template, cfg.train_on)
    specials = set(tokenizer.all_special_ids)
    tokens = [(tokenizer.decode([t]), bool(on), t in specials) for t, on in zip(shown.input_ids, shown.trained)]
    sampled = len(rows) > STATS_SAMPLE
    sample = random.Random(0).sample(rows, STATS_SAMPLE) if sampled else rows
    tokenized = [tokenize_row(r, fmt, tokenizer, template, cfg.train_on) for r in sample]
    return DataPreview(fmt, len(rows), sorted(rows[0].fields), row, shown.text, tokens,
                       [len(t.input_ids) for t in tokenized], max_length, template.name,
                       _stats(tokenized, max_length, sampled), template_warnings(tokenizer, template))


def _stats(tokenized, max_length: int, sampled: bool) -> DataStats:
    seen: set[str] = set()
    duplicates = 0
    for t in tokenized:
        duplicates += t.text in seen
        seen.add(t.text)
    return DataStats(
        rows=len(tokenized),
        sampled=sampled,
        tokens=sum(len(t.input_ids) for t in tokenized),
        trained_tokens=sum(sum(t.trained) for t in tokenized),
        rows_cut=sum(len(t.input_ids) > max_length for t in tokenized),
        responses_cut=sum(any(t.trained[max_length:]) for t in tokenized),
        fully_masked=sum(not any(t.trained[1:max_length]) for t in tokenized),
        duplicates=duplicates,
    )
