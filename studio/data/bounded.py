"""Reading records in bounded memory: one record may be huge or deeply nested, and must not take the reader down.

A record over `data.max_row_chars`, nested deeper than MAX_NESTING, or holding
a value JSON does not have (NaN, Infinity) becomes a `BadRecord` with its
reason; the reader names its place and goes on. An over-long line is measured
while it is skipped, a chunk at a time, so a 50 MB line costs a few MB.

    for number, line in bounded_lines(path, "a.jsonl", max_chars=1_000_000):
        ...  # line is the text, or a BadRecord saying how long it was
"""

from __future__ import annotations

import codecs
import json
import re
import typing
from pathlib import Path
from typing import Iterator, NamedTuple

from studio.errors import DataError

MAX_NESTING = 64  # levels of lists and objects a record may have; training data needs a handful
CHUNK = 1 << 20
# A JSON value inside an array, read as tokens: strings are skipped whole, brackets counted.
_JSON_TOKEN = re.compile(r'["\[\]{},]')
_STRING_END = re.compile(r'["\\]')


class BadRecord(NamedTuple):
    """A record that was not kept, and why (its place is added by the reader)."""

    reason: str
    chars: int = 0  # its length, when that is what is wrong


def too_long(chars: int, max_chars: int) -> BadRecord:
    return BadRecord(f"row of {chars:,} characters is over data.max_row_chars={max_chars:,} "
                     "(raise it to keep such rows)", chars)


TOO_DEEP = BadRecord(f"nested more than {MAX_NESTING} levels deep (lists and objects inside each other); "
                     "a training row needs a few levels")


def record_problem(record, max_chars: int) -> BadRecord | None:
    """Why `record` (parsed data) cannot be a row: more than `max_chars` characters of text in its values,
    or nested too deeply."""
    chars, stack = 0, [(record, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            chars += len(value)
        elif isinstance(value, (dict, list, tuple)):
            if depth >= MAX_NESTING:
                return TOO_DEEP
            stack += [(item, depth + 1) for item in (value.values() if isinstance(value, dict) else value)]
    return too_long(chars, max_chars) if chars > max_chars else None


class NotJsonValue(ValueError):
    """NaN or Infinity: Python reads them, but they are not JSON and no text a model can learn."""


def refuse_constant(name: str) -> typing.NoReturn:
    raise NotJsonValue(f"not valid JSON ({name} is not a JSON value; write null or a number)")


def parse_json(text: str) -> object | BadRecord:
    """One JSON document, or why it cannot be a record (nesting, NaN, a malformed document)."""
    try:
        return json.loads(text, parse_constant=refuse_constant)
    except RecursionError:
        return TOO_DEEP
    except json.JSONDecodeError as exc:
        return BadRecord(f"not valid JSON ({exc.msg} at column {exc.colno})")
    except NotJsonValue as exc:
        return BadRecord(str(exc))
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        return BadRecord(f"not valid JSON ({exc})")


# ---------------------------------------------------------------- lines


def bounded_lines(path: Path, label: str, max_chars: int) -> Iterator[tuple[int, str | BadRecord]]:
    """(line number, text) of each line, or a BadRecord for a line over `max_chars` characters.

    Lines are decoded one by one so an encoding error names its line. At most
    4 bytes per character are read of a line before it is known to be too long.
    """
    limit = 4 * max_chars + 4  # bytes: UTF-8 takes at most 4 per character, and the line end
    with path.open("rb") as fh:
        number = 0
        while raw := fh.readline(limit):
            number += 1
            if len(raw) == limit and not raw.endswith(b"\n"):
                yield number, too_long(_skip_rest_of_line(fh, raw), max_chars)
                continue
            if number == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            text = _decode_line(raw, label, number)
            chars = len(text.rstrip("\r\n"))
            yield number, (too_long(chars, max_chars) if chars > max_chars else text)


def _decode_line(raw: bytes, label: str, number: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{label}:{number}: not UTF-8 text ({exc.reason} at byte {exc.start} of the line). "
                        "Save the file as UTF-8.") from None


def _skip_rest_of_line(fh, start: bytes) -> int:
    """Read the rest of a line in chunks, keeping none of it: its length in characters."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    chars, piece = len(decoder.decode(start)), start
    while piece and not piece.endswith(b"\n"):
        piece = fh.readline(CHUNK)
        chars += len(decoder.decode(piece))
    ending = 2 if piece.endswith(b"\r\n") else 1 if piece.endswith(b"\n") else 0
    return chars - ending


class BoundedTextLines:
    """The lines of a CSV file for csv.reader, each at most `max_chars`; a longer one raises LineTooLong.

    csv.reader pulls lines through this iterator, so a huge line is never handed
    to it. The record holding the line is skipped to its end: quotes are counted
    (an odd number so far means a quoted value goes on past the line end), so
    the reader goes on at the next record, not inside the skipped one.
    """

    def __init__(self, fh, max_chars: int):
        self.fh, self.max_chars, self.number, self.in_quotes = fh, max_chars, 0, False

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = self.fh.readline(self.max_chars + 2)  # the line end may be \r\n
        if not line:
            raise StopIteration
        self.number += 1
        if len(line) == self.max_chars + 2 and not line.endswith("\n"):
            raise LineTooLong(self._skip_record(line))
        self.in_quotes ^= line.count('"') % 2 == 1
        return line

    def _skip_record(self, line: str) -> int:
        """Read on to the end of the record that `line` begins or continues, keeping none of it: its length."""
        chars = 0
        while line:
            chars += len(line)
            self.in_quotes ^= line.count('"') % 2 == 1
            if line.endswith("\n"):
                if not self.in_quotes:
                    return chars - (len(line) - len(line.rstrip("\r\n")))
                self.number += 1
            line = self.fh.readline(CHUNK)
        self.in_quotes = False
        return chars

    def skip_rest_of_record(self) -> None:
        """After csv.reader gave up inside a quoted value (too long): read on to the end of its record."""
        at_line_start = True
        while self.in_quotes or not at_line_start:
            line = self.fh.readline(CHUNK)
            if not line:
                break
            self.number += at_line_start
            at_line_start = line.endswith("\n")
            self.in_quotes ^= line.count('"') % 2 == 1
        self.in_quotes = False


class LineTooLong(Exception):
    def __init__(self, chars: int):
        super().__init__(chars)
        self.chars = chars


# ---------------------------------------------------------------- JSON arrays


def iter_json_array(fh, start: str, label: str, chunk_size: int = CHUNK,
                    max_chars: int = 64 << 20) -> Iterator[object | BadRecord]:
    """The items of the JSON array held by `start` and the rest of `fh`, decoded one at a time.

    Only a chunk or so is in memory, so the first items of a huge file arrive
    at once. An item longer than `max_chars`, nested too deeply or holding NaN
    is skipped to its end (a BadRecord); a syntax error ends the file: past it,
    where the next item starts cannot be known.
    """
    decoder = json.JSONDecoder(parse_constant=refuse_constant)
    buffer, pos = start, start.index("[") + 1
    line = 1 + start.count("\n", 0, pos)

    def more() -> bool:
        nonlocal buffer, pos
        chunk = fh.read(chunk_size)
        if chunk:
            buffer, pos = buffer[pos:] + chunk, 0
        return bool(chunk)

    def fail(message: str, at: int) -> typing.NoReturn:
        raise DataError(f"{label}:{line + buffer.count(chr(10), pos, at)}: not valid JSON ({message}).")

    def skip_item(bad: BadRecord | None, error: json.JSONDecodeError | None = None) -> BadRecord:
        """Skip the item at `pos` by its brackets and quotes, a chunk at a time.

        Without `bad`, the item did not decode in more than max_chars: if it
        ends within them after all, that was a syntax error (`error`).
        """
        nonlocal pos, line
        skipper = _ValueSkipper()
        while True:
            end = skipper.feed(buffer, pos)
            if end is not None and bad is None and skipper.chars <= max_chars:
                fail(error.msg, error.pos)
            line += buffer.count("\n", pos, len(buffer) if end is None else end)
            if end is not None:
                pos = end
                return bad or too_long(skipper.chars, max_chars)
            pos = len(buffer)
            if not more():
                fail("the array is not closed", pos)

    after_item = False
    while True:
        while True:  # to the next character that is not white space
            while pos < len(buffer) and buffer[pos] in " \t\r\n":
                line += buffer[pos] == "\n"
                pos += 1
            if pos < len(buffer) or not more():
                break
        if pos == len(buffer):
            fail("the array is not closed", pos)
        if buffer[pos] == "]":
            return
        if after_item:
            if buffer[pos] != ",":
                fail("expected ',' or ']' after an item", pos)
            pos, after_item = pos + 1, False
            continue
        while True:
            try:
                item, end = decoder.raw_decode(buffer, pos)
            except json.JSONDecodeError as exc:
                if len(buffer) - pos <= max_chars and more():
                    continue  # the item may just be cut by the chunk's end
                if len(buffer) - pos <= max_chars:
                    fail(exc.msg, exc.pos)
                item = skip_item(None, exc)
                break
            except RecursionError:
                item = skip_item(TOO_DEEP)
                break
            except ValueError as exc:  # NaN, Infinity, an integer of thousands of digits
                item = skip_item(BadRecord(str(exc) if isinstance(exc, NotJsonValue) else f"not valid JSON ({exc})"))
                break
            # A number cut by the chunk's end decodes as a shorter one: take an item only where a
            # separator follows it, or at the end of the file.
            if (end < len(buffer) and buffer[end] in " \t\r\n,]") or not more():
                line += buffer.count("\n", pos, end)
                pos = end
                break
        after_item = True
        yield item


class _ValueSkipper:
    """Finds where one JSON value ends, fed a chunk at a time; keeps only its state (depth, inside a string)."""

    def __init__(self):
        self.depth, self.in_string, self.escaped, self.chars = 0, False, False, 0

    def feed(self, text: str, pos: int) -> int | None:
        """The end of the value in `text` from `pos`, or None when it goes on in the next chunk."""
        start = pos
        while True:
            if self.escaped:  # the character after a backslash, possibly the first of this chunk
                if pos >= len(text):
                    break
                pos, self.escaped = pos + 1, False
            if self.in_string:
                match = _STRING_END.search(text, pos)
                if match is None:
                    break
                pos = match.end()
                if match.group() == "\\":
                    self.escaped = True
                    continue
                self.in_string = False
                if self.depth == 0:
                    return self._done(start, pos)
                continue
            match = _JSON_TOKEN.search(text, pos)
            if match is None:
                break
            token, pos = match.group(), match.end()
            if token == '"':
                self.in_string = True
            elif token in "[{":
                self.depth += 1
            elif self.depth == 0:  # , or ] after a scalar: the value ended before it
                return self._done(start, pos - 1)
            elif token in "]}":
                self.depth -= 1
                if self.depth == 0:
                    return self._done(start, pos)
        self.chars += len(text) - start
        return None

    def _done(self, start: int, end: int) -> int:
        self.chars += end - start
        return end
