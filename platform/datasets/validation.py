"""Validating an uploaded dataset: every problem named with its line, like a compiler would.

Pure functions over bytes (no database, no storage), so the rules are tested directly. A
file with any error is stored as ``invalid`` and cannot be trained on; warnings do not block.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from rest_framework.utils.json import strict_constant

from core.parsers import DuplicateName, unique_names
from inference.serializers import has_visible_text
from workers.contract import MAX_INPUT_CHARS, MAX_LABEL_CHARS

from . import messages
from .formats import format_detect, is_json_array, is_utf16
from .label_checks import label_set_check
from .lines import FileLines

# NOTE: csv's limit on one field (128 KiB unless raised; process-wide) made a text of 200,000
# characters "unreadable CSV" rather than a text too long, as JSONL reports it. Uploads are
# capped far below this (DATASET_MAX_BYTES); raising it once, here, never lowers it.
csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))

# A str as a JSON string, non-ASCII kept (json's own, in C).
_json_string = json.encoder.encode_basestring

MAX_REPORTED_ERRORS = 100
MAX_REPORTED_WARNINGS = 100
# Validated in its request, a file stops at this many errors (19 MB of bad two-byte lines
# held an API thread for 99 s and 1.2 GB), and one of more lines than a fine-tune could train
# on (``max_lines``: a row is 3 tokens or more, [CLS], a word, [SEP]) is read not at all.
MAX_COUNTED_ERRORS = 10_000
MIN_ROW_TOKENS = 3


def max_lines() -> int:
    """The rows one epoch of FINETUNE_MAX_TRAINED_TOKENS could train on (10 M: 3,333,333)."""
    return max(int(settings.FINETUNE_MAX_TRAINED_TOKENS) // MIN_ROW_TOKENS, 1)


# A member the line lacks (``"label": null`` is there, and not a string).
MISSING: Any = object()


@dataclass
class Validation:
    format: str = ""
    # The good rows: how many, per label, and as the JSONL training reads
    # (``normalised_line``), written as they are read rather than kept as pairs.
    rows: int = 0
    _label_counts: Counter[str] = field(default_factory=Counter)
    _content: io.BytesIO = field(default_factory=io.BytesIO)
    errors: list[dict[str, Any]] = field(default_factory=list)
    error_count: int = 0
    warnings: list[dict[str, Any]] = field(default_factory=list)
    _seen: dict[str, int] = field(default_factory=dict)
    # Labels whose surrounding whitespace was removed: how many, and the first one and line.
    _stripped_labels: int = 0
    _first_stripped: tuple[int, str] | None = None
    _warnings_left_out: int = 0
    # Reading rows, past decoding every line: where "the lines after it were not read" holds.
    reading: bool = False

    @property
    def valid(self) -> bool:
        return self.error_count == 0

    @property
    def labels(self) -> dict[str, int]:
        return dict(sorted(self._label_counts.items()))

    def content(self) -> bytes:
        """The good rows as normalised JSONL, the one format training reads."""
        return self._content.getvalue()

    @property
    def examples(self) -> list[tuple[str, str]]:
        """The good rows as (text, label), read back from ``content`` (for tests)."""
        rows = (json.loads(line) for line in self.content().splitlines())
        return [(row["text"], row["label"]) for row in rows]

    def error(self, line: int | None, message: str) -> None:
        """Count every error; keep only the ones ``finish`` can report (a file of a million
        bad lines held a million of them, ~240 MB a megabyte of upload). The
        ``MAX_COUNTED_ERRORS``-th error of a line stops the reading (``_Stop``)."""
        self.error_count += 1
        self.errors.append({"line": line, "message": message})
        if len(self.errors) >= 2 * MAX_REPORTED_ERRORS:
            self._trim_errors()
        if line is not None and self.reading and self.error_count >= MAX_COUNTED_ERRORS:
            raise _Stop(line)

    def _trim_errors(self) -> None:
        """The first MAX_REPORTED_ERRORS errors in line order, whole-file ones (too few
        labels, too few examples of one) last but always kept: cut behind 100 bad lines, a
        file's own problem was found only once every line had been fixed."""
        whole = [e for e in self.errors if e["line"] is None][:MAX_REPORTED_ERRORS]
        lines = sorted((e for e in self.errors if e["line"] is not None), key=lambda e: e["line"])
        self.errors = lines[: MAX_REPORTED_ERRORS - len(whole)] + whole

    def finish(self) -> Validation:
        self._trim_errors()
        if self._warnings_left_out:
            self.warnings.append({"line": None, "message": messages.MORE_WARNINGS.format(
                count=self._warnings_left_out)})  # fmt: skip
            self._warnings_left_out = 0
        return self

    def warn(self, line: int | None, message: str) -> None:
        """Up to MAX_REPORTED_WARNINGS, then counted (a file of thousands of labels that
        differ only in case stored, and listed, a warning for each)."""
        if len(self.warnings) >= MAX_REPORTED_WARNINGS:
            self._warnings_left_out += 1
            return
        self.warnings.append({"line": line, "message": message})

    def add(self, line: int, text: Any, label: Any) -> None:
        """Check one example; keep it if it is good."""
        problems = []
        stripped = False  # whether the label had surrounding whitespace removed
        for name, value in (("text", text), ("label", label)):
            if value is MISSING:
                problems.append(messages.MISSING_FIELD.format(field=name))
            elif not isinstance(value, str):
                problems.append(messages.NOT_STRING.format(field=name))
        if not problems and ("\x00" in text or "\x00" in label):
            # NOTE: no database stores NUL in text, and no tokenizer means anything by it.
            problems.append(messages.NUL_CHARACTER)
        if not problems and not (_encodable(text) and _encodable(label)):
            # A JSON escape of half a surrogate pair ("\ud800") is no character at all:
            # nothing can store or tokenize it.
            problems.append(messages.LONE_SURROGATE)
        if not problems:
            # NOTE: as /v1/classify refuses it: a text of only spaces, zero-width or other
            # invisible characters means nothing to learn from.
            if not has_visible_text(text):
                problems.append(messages.EMPTY_TEXT)
            elif len(text) > MAX_INPUT_CHARS:
                problems.append(
                    messages.TEXT_TOO_LONG.format(length=len(text), limit=MAX_INPUT_CHARS)
                )
            # NOTE: a label is a class name: "negative" and "negative " (a stray space in a
            # spreadsheet cell, or after a CSV comma) are never meant as two classes. The
            # label is trained stripped, and one warning says so (``label_warning``).
            if label != label.strip():
                stripped, label = True, label.strip()
            if not has_visible_text(label):
                problems.append(messages.EMPTY_LABEL)
            elif len(label) > MAX_LABEL_CHARS:
                problems.append(
                    messages.LABEL_TOO_LONG.format(length=len(label), limit=MAX_LABEL_CHARS)
                )
        if not problems:
            first = self._seen.get(text)
            if first is not None:
                problems.append(messages.DUPLICATE.format(line=first))
            else:
                self._seen[text] = line
        for problem in problems:
            self.error(line, problem)
        if not problems:
            if stripped:
                self._stripped_labels += 1
                if self._first_stripped is None:
                    self._first_stripped = (line, label)
            self.rows += 1
            self._label_counts[label] += 1
            self._content.write(normalised_line(text, label))

    def label_warning(self) -> None:
        """One warning for all the labels that had surrounding whitespace removed."""
        if self._first_stripped is None:
            return
        line, label = self._first_stripped
        count = self._stripped_labels
        rows = "row" if count == 1 else "rows"
        self.warn(
            line, messages.LABEL_WHITESPACE.format(count=count, rows=rows, line=line, label=label)
        )


class _Stop(Exception):
    """Too many errors at ``line`` (``decoding``: before any row was read)."""

    def __init__(self, line: int, *, decoding: bool = False) -> None:
        super().__init__(line)
        self.line, self.decoding = line, decoding


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _jsonl(lines: FileLines, result: Validation) -> None:
    extra_seen = False
    for number, line in lines:
        if not line.strip():
            continue
        try:
            # NaN and Infinity are not JSON (RFC 8259), as /v1/classify holds too.
            row = json.loads(line, object_pairs_hook=unique_names, parse_constant=strict_constant)
        except DuplicateName as exc:  # ``{"text": "a", "text": "b"}``: readers disagree
            result.error(number, messages.DUPLICATE_MEMBER.format(name=exc.name))
            continue
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
            result.error(number, messages.NOT_JSON.format(error=str(exc).split(":")[0]))
            continue
        if not isinstance(row, dict):
            result.error(number, messages.NOT_OBJECT)
            continue
        if not extra_seen and set(row) - {"text", "label"}:
            extra_seen = True
            result.warn(number, messages.EXTRA_KEYS.format(line=number))
        result.add(number, row.get("text", MISSING), row.get("label", MISSING))


def _csv_unreadable(exc: csv.Error) -> str:
    # NOTE: csv's own words for a lone carriage return inside a line point at Python's
    # open(); the file's author needs to know which character and what to do.
    if "new-line character seen in unquoted field" in str(exc):
        return messages.CSV_LONE_CR
    return messages.CSV_UNREADABLE.format(error=exc)


def _csv(lines: FileLines, result: Validation) -> None:
    """Rows of a CSV file with a ``text,label`` header (any order, other columns ignored
    with a warning),
    every problem reported with its line, as for JSONL."""
    # csv needs the text back; undecodable lines were already reported and are left out,
    # which shifts no line numbers because we pass the numbers along with the rows.
    # Lines go back in with their newline so a quoted field may span lines.
    # strict: a quote that opens a field must close it before the next comma or line end.
    # Lenient, csv merged a row with an unterminated quote and the lines after it into one
    # text (its label and a good row lost, the file reported valid); and '"x" y' read as 'x y'.
    # Line numbers of the lines read so far, kept only where some line was not UTF-8 (the
    # n-th line read is otherwise line n).
    numbers: list[int] = []

    def feed() -> Iterator[str]:
        for number, line in lines:
            if not lines.all_utf8:
                numbers.append(number)
            yield line + "\n"

    def number_of(read: int) -> int:  # (the line a row that starts at line ``read`` is on)
        if lines.all_utf8:
            return min(read, lines.count - 1) + 1
        return numbers[min(read, len(numbers) - 1)]

    reader = csv.reader(feed(), strict=True)
    try:
        header = [name.strip().lower() for name in next(reader)]
    except StopIteration:
        return
    except csv.Error as exc:
        result.error(1, _csv_unreadable(exc))
        return
    header_line = number_of(0)
    # A repeated column leaves it to chance which of the two is the text (or the label).
    # Empty names are left alone: "text,label,," is how spreadsheets export empty columns.
    repeated = [name for name, n in Counter(header).items() if name and n > 1]
    for name in repeated:
        result.error(header_line, messages.CSV_DUPLICATE_COLUMN.format(name=name))
    if repeated:
        return
    if "text" not in header or "label" not in header:
        result.error(header_line, messages.CSV_HEADER)
        return
    text_at, label_at = header.index("text"), header.index("label")
    others = [name for name in header if name and name not in ("text", "label")]
    if others:  # (as a JSONL line's other keys: read past, and said so)
        result.warn(header_line, messages.EXTRA_COLUMNS.format(names=", ".join(others)))
    # NOTE: csv.reader's line_num counts physical lines consumed, so a quoted field with
    # newlines still reports the line its row starts on (offset by any skipped lines).
    while True:
        start = reader.line_num
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            result.error(number_of(start), _csv_unreadable(exc))
            if reader.line_num <= start:  # nothing consumed: it would fail the same again
                break
            continue  # the reader starts afresh on the next line: report the rest too
        number = number_of(start)
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            found = messages.CSV_COLUMNS.format(expected=len(header), found=len(row))
            result.error(number, found)
            continue
        result.add(number, row[text_at], row[label_at])


def dataset_validate(data: bytes, *, filename: str = "") -> Validation:
    result = Validation()
    if is_utf16(data[:4096]):
        result.error(None, messages.UTF16)
        return result.finish()
    lines = FileLines(data)
    # (Counted before a line is split out: its lines would take a gigabyte.)
    if (count := lines.counted) > (limit := max_lines()):
        result.error(None, messages.TOO_MANY_LINES.format(count=count, limit=limit))
        return result.finish()
    try:
        return _validate(lines, filename, result)
    except _Stop as stop:
        message = messages.NOT_UTF8_STOP if stop.decoding else messages.TOO_MANY_ERRORS
        result.error(None, message.format(count=result.error_count, line=stop.line))
        return result.finish()


def _validate(lines: FileLines, filename: str, result: Validation) -> Validation:
    # A line that is not UTF-8 is an error of its own, so one bad byte does not hide the
    # rest of the file's problems; the reading passes over it.
    for number in lines.undecodable():
        result.error(number, messages.NOT_UTF8)
        if result.error_count >= MAX_COUNTED_ERRORS:  # (no row read yet: say so)
            raise _Stop(number, decoding=True)
    result.reading = True
    if not any(line.strip() for _, line in lines) and result.error_count == 0:
        result.error(None, messages.EMPTY_FILE)
        return result.finish()
    number, first = next(((n, line.strip()) for n, line in lines if line.strip()), (1, ""))
    only = not any(text.strip() for n, text in lines if n > number)
    if is_json_array(first, only_line=only):
        # (Read as JSONL, a pretty-printed array was an error on every line, none of them
        # saying what the file is.)
        result.error(number, messages.JSON_ARRAY)
        return result.finish()
    result.format = format_detect(filename, lines)
    if result.format == "csv":
        _csv(lines, result)
    elif result.format == "jsonl":
        _jsonl(lines, result)
    else:
        result.error(1, messages.UNKNOWN_FORMAT)
        return result.finish()
    result.label_warning()
    if not result.rows:
        # Every line bad (or none there): the lines' errors say what is wrong, not a count of
        # labels that no good line has yet (it took the place of the 100th bad line).
        if result.error_count == 0:
            result.error(None, messages.EMPTY_FILE)
        return result.finish()
    label_set_check(result)
    return result.finish()


def normalised_line(text: str, label: str) -> bytes:
    """A row as training reads it, whatever the upload's format: what
    ``json.dumps({"text": text, "label": label}, ensure_ascii=False)`` writes, and a newline
    (its strings encoded directly: dumps built an encoder for each row)."""
    return f'{{"text": {_json_string(text)}, "label": {_json_string(label)}}}\n'.encode()


def normalised_jsonl(examples: list[tuple[str, str]]) -> bytes:
    return b"".join(normalised_line(text, label) for text, label in examples)
