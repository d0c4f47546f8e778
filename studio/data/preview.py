"""What the model will train on: one row token by token, and statistics over the rows.

The preview reads at most PREVIEW_ROWS rows (more only to reach the row asked
for), so a 1 GB file shows at once; training reads everything. `complete`
says whether the preview saw all of the data or its beginning.

    p = preview_dataset(cfg.data, tokenizer, template, max_length=1024, row=0)
    p.tokens      # [(piece, trained, special), ...] for row 0, as training sees it
    p.rejected    # the same for the rejected side of a pair: sft shows it untrained, dpo/orpo train both sides
    p.label       # kto: whether the row shown is a good (True) or a bad (False) answer
    p.reward_columns  # grpo: what the rewards read beside the prompt shown ({"answer": "42"})
    p.lengths     # token length of every row read (of the chosen side of a pair; p.rejected_lengths the other)
    p.stats       # rows, tokens, trained tokens, rows cut, responses cut, empty and duplicate rows
    p.skipped     # malformed rows, each with file:line and the reason
    p.count_line  # "Kept 60 of 63 rows (3 skipped)": the one count of rows, for every view

Run as:  python launch.py data recipes/quickstart.yaml [--row N]
"""

from __future__ import annotations

from dataclasses import dataclass

from studio.config import DataConfig
from studio.data.building import PREFERENCE_NOTE, SEQUENCES, RowShape, check_shape, tokenize_rows
from studio.data.formats import check_bad_rows, load_rows, preference_pair
from studio.data.pairs import LabelledRow, PairRow
from studio.data.prompts import PromptRow
from studio.errors import StudioError
from studio.data.files import Skipped
from studio.data.sources import read_sources
from studio.data.templates import Template, TokenizedRow, template_warnings, tokenize_conversation

PREVIEW_ROWS = 2000  # rows read and tokenized for the preview and its statistics
# Tokens shown at each end of a longer row: a row of 250k tokens would take seconds to send and a
# browser tab to draw, and the ends show the prompt's start and the response.
SHOWN_TOKENS = 2048

Tokens = list[tuple[str, bool, bool]]  # (piece, trained, special)
REPLACEMENT = "\ufffd"  # what decoding shows for the bytes of a character cut by the token's end
MAX_JOINED = 16  # tokens joined at most into one piece (a character is at most 4 bytes; a token at least 1)


@dataclass(frozen=True)
class DataStats:
    rows: int  # rows tokenized (all rows read)
    sampled: bool  # the rows are the beginning of the data, not all of it
    tokens: int
    trained_tokens: int
    rows_cut: int  # longer than max_length
    responses_cut: int  # of those, rows that lose trained (response) tokens
    fully_masked: int  # rows with nothing left to learn once cut to max_length (training drops them)
    duplicates: int  # rows whose rendered text appeared before
    identical_pairs: int  # preference rows whose chosen and rejected responses are the same


@dataclass(frozen=True)
class DataPreview:
    format: str
    detected: bool  # format found from the columns, not set
    rows: int  # rows kept: read, and tokenized without a problem
    read: int  # rows read: the kept ones and the skipped ones
    complete: bool  # every row of the data was read (else the rows are its beginning)
    size: int  # bytes of the local files
    sources: list[str]
    columns: list[str]
    row: int
    text: str
    tokens: Tokens  # pieces of the row: all of them, or both ends of a very long row (SHOWN_TOKENS each)
    row_tokens: int  # tokens of the row shown
    trained_tokens: int  # of those, trained
    rejected: Tokens  # the rejected side of a preference row, else empty
    row_error: str  # why the row shown cannot be trained on (it is skipped), else ""
    skipped: list[Skipped]
    lengths: list[int]
    max_length: int
    template: str
    stats: DataStats
    warnings: list[str]
    rejected_lengths: list[int] = ()  # token lengths of the rejected sides (dpo, orpo)
    label: bool | None = None  # kto: the label of the row shown
    reward_columns: dict | None = None  # grpo: what the rewards read beside the prompt shown (answer, ...)

    @property
    def count_line(self) -> str:
        """How many rows were kept of those read: "Kept 60 of 63 rows (3 skipped)", or "63 rows"."""
        if not self.skipped:
            return f"{self.rows:,} rows"
        return f"Kept {self.rows:,} of {self.read:,} rows ({len(self.skipped):,} skipped)"

    @property
    def sample_note(self) -> str:
        """When the preview read the data's beginning only: how much of it; else ""."""
        if self.complete:
            return ""
        of = f" of {self.size / 2**20:,.1f} MB" if self.size else ""
        return f"A sample: the preview read the first {self.read:,} rows{of}; training reads all of it."


def preview_dataset(cfg: DataConfig, tokenizer, template: Template, max_length: int, row: int = 0,
                    shape: RowShape = SEQUENCES, method: str = "sft") -> DataPreview:
    """The data as `method` trains on it: one row token by token and statistics over the rows read."""
    loaded = load_rows(cfg, limit=max(PREVIEW_ROWS, row + 1))
    check_shape(loaded.format, shape, method, cfg.path)
    rows = loaded.rows
    row = max(0, min(row, len(rows) - 1))
    text, tokens, rejected, row_error, counts, label, columns = "", [], [], "", (0, 0), None, None
    try:
        shown = tokenize_rows([rows[row]], loaded.format, tokenizer, template, cfg.train_on, shape)
        if not shown[0]:
            raise StudioError(str(shown[1][0]))
        views = _views(shown[0][0], rows[row], loaded.format, tokenizer, template, cfg.train_on)
        first = views[0]
        text, tokens, counts = first.text, _pieces(tokenizer, first), (len(first.input_ids), sum(first.trained))
        rejected = _pieces(tokenizer, views[1]) if len(views) > 1 else []
        label = shown[0][0].label if isinstance(shown[0][0], LabelledRow) else None
        columns = shown[0][0].columns if isinstance(shown[0][0], PromptRow) else None
    except StudioError as exc:
        row_error = str(exc)
    tokenized, bad = tokenize_rows(rows, loaded.format, tokenizer, template, cfg.train_on, shape)
    skipped = loaded.skipped + bad
    if not tokenized:
        check_bad_rows(0, skipped, cfg.max_bad_fraction)  # nothing to show: the reason, as training would give it
    warnings = loaded.notes + template_warnings(tokenizer, template)
    if loaded.format == "preference" and shape is SEQUENCES:
        warnings.append(PREFERENCE_NOTE)
    try:
        check_bad_rows(len(tokenized), skipped, cfg.max_bad_fraction)
    except StudioError as exc:
        warnings.append(f"Training would refuse this data: {exc}")
    identical = _identical_pairs(rows) if loaded.format == "preference" else 0
    sides = [_side_views(t) for t in tokenized]
    chosen_sides = [s[0] for s in sides]
    return DataPreview(
        loaded.format, loaded.detected, len(tokenized), len(tokenized) + len(skipped), loaded.complete, loaded.size,
        loaded.sources, loaded.columns,
        row, text, tokens, *counts, rejected, row_error, skipped, [len(t.input_ids) for t in chosen_sides], max_length,
        template.name, _stats(chosen_sides, max_length, not loaded.complete, identical,
                              bool(tokenized) and isinstance(tokenized[0], PromptRow)), warnings,
        [len(s[1].input_ids) for s in sides if len(s) > 1], label, columns,
    )


def _views(tokenized, row, fmt: str, tokenizer, template: Template, train_on: str) -> list[TokenizedRow]:
    """The row as token sequences with their trained tokens: one, or a pair's two sides.

    For sft on a preference pair the rejected side is shown untrained: it is not used.
    """
    if isinstance(tokenized, TokenizedRow):
        if fmt != "preference":
            return [tokenized]
        other = tokenize_conversation(tokenizer, template, preference_pair(row)[1], train_on)
        return [tokenized, TokenizedRow(other.text, other.input_ids, [0] * len(other.input_ids))]
    views = _side_views(tokenized)
    return [TokenizedRow(tokenizer.decode(v.input_ids), v.input_ids, v.trained, v.where) for v in views]


def _side_views(row) -> tuple[TokenizedRow, ...]:
    """Each sequence a row trains on, with its answer tokens marked trained (text left empty: not decoded)."""
    if isinstance(row, PairRow):
        prompt = [0] * len(row.prompt_ids)
        return (TokenizedRow("", row.prompt_ids + row.chosen_ids, prompt + [1] * len(row.chosen_ids), row.where),
                TokenizedRow("", row.prompt_ids + row.rejected_ids, prompt + [1] * len(row.rejected_ids), row.where))
    if isinstance(row, LabelledRow):
        return (TokenizedRow("", row.prompt_ids + row.completion_ids,
                             [0] * len(row.prompt_ids) + [1] * len(row.completion_ids), row.where),)
    if isinstance(row, PromptRow):  # nothing of it trains: the model's own completions do
        return (TokenizedRow(row.text, row.prompt_ids, [0] * len(row.prompt_ids), row.where),)
    return (row,)


def data_columns(cfg: DataConfig, rows: int = 100) -> list[str]:
    """The column names of the data's first rows, in file order: the choices for data.columns.

    Read without the model or the format, so the mapping can be chosen for
    data whose format cannot be told from its columns yet.
    """
    read = read_sources(cfg.path, cfg.split, cfg.subset, cfg.text_unit, rows, cfg.max_row_chars)
    return list(dict.fromkeys(str(name) for row in read.rows for name in row.fields))


def _pieces(tokenizer, row: TokenizedRow) -> Tokens:
    """The row's tokens as text pieces; of a very long row both ends, and between them how many are left out."""
    ids, trained = row.input_ids, row.trained
    if len(ids) <= 2 * SHOWN_TOKENS:
        return _joined_pieces(tokenizer, ids, trained)
    gap = (f" … {len(ids) - 2 * SHOWN_TOKENS:,} tokens not shown … ", False, False)
    return (_joined_pieces(tokenizer, ids[:SHOWN_TOKENS], trained[:SHOWN_TOKENS]) + [gap]
            + _joined_pieces(tokenizer, ids[-SHOWN_TOKENS:], trained[-SHOWN_TOKENS:]))


def _joined_pieces(tokenizer, ids: list[int], trained: list[int]) -> Tokens:
    """Each token as text; tokens that split a character's UTF-8 bytes are joined, so none shows as �.

    Only tokens alike (both trained or both masked, both special or not) are
    joined, so the colouring stays exact.
    """
    specials = set(tokenizer.all_special_ids)
    flags = [(bool(on), t in specials) for t, on in zip(ids, trained)]
    pieces: Tokens = []
    group: list[int] = []
    for i, token in enumerate(ids):
        group.append(token)
        text = tokenizer.decode(group)
        cut = text.endswith(REPLACEMENT) and len(group) < MAX_JOINED
        if cut and i + 1 < len(flags) and flags[i + 1] == flags[i]:
            continue  # the character goes on in the next token
        pieces.append((text, *flags[i]))
        group = []
    return pieces


def _identical_pairs(rows) -> int:
    count = 0
    for r in rows:
        try:
            chosen, rejected = preference_pair(r)
        except StudioError:
            continue  # counted among the skipped rows
        count += chosen == rejected
    return count


def _stats(tokenized, max_length: int, sampled: bool, identical_pairs: int, prompts: bool = False) -> DataStats:
    """Statistics over the rows; of prompts (grpo), those with nothing to learn are the ones longer than max_length."""
    seen: set[tuple] = set()
    duplicates = 0
    for t in tokenized:
        key = tuple(t.input_ids)
        duplicates += key in seen
        seen.add(key)
    return DataStats(
        rows=len(tokenized),
        sampled=sampled,
        tokens=sum(len(t.input_ids) for t in tokenized),
        trained_tokens=sum(sum(t.trained) for t in tokenized),
        rows_cut=sum(len(t.input_ids) > max_length for t in tokenized),
        responses_cut=sum(any(t.trained[max_length:]) for t in tokenized),
        fully_masked=sum((len(t.input_ids) > max_length) if prompts else not any(t.trained[1:max_length])
                         for t in tokenized),
        duplicates=duplicates,
        identical_pairs=identical_pairs,
    )
