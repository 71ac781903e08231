"""What an uploaded file is, read from its content first: JSONL, CSV, or one of the files
people send instead (UTF-16 text, a JSON array), each told apart so that it gets one error
that says what it is."""

from __future__ import annotations

import csv
import json

from .lines import FileLines


def format_detect(filename: str, lines: FileLines) -> str:
    """What the file holds, its content first: jsonl when its first line starts an object
    (under a .csv name, only when that line is one), csv when that line is a header naming
    ``text`` or ``label`` (one lacking the other is told so); then by name (.csv, .jsonl,
    .json); else jsonl when any line starts an object (per-line errors for a file whose
    first lines are broken). NOTE: the name came first: a CSV sent as ``curl -F file=@-``
    was refused as neither, and JSONL named .csv read as a header-less CSV (an audit)."""
    first = next((line.strip() for _, line in lines if line.strip()), "")
    name = filename.lower()
    if first.startswith("{") and (not name.endswith(".csv") or _json_object(first)):
        return "jsonl"
    if {"text", "label"} & header_names(first):
        return "csv"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".jsonl", ".json")) or any(
        line.lstrip().startswith("{") for _, line in lines
    ):
        return "jsonl"
    return ""


def is_utf16(head: bytes) -> bool:
    """UTF-16 (what Excel's "Unicode text" and PowerShell write): a byte order mark, or a
    NUL in every other byte (ASCII text's high bytes). Read as UTF-8 it was a file of NUL
    characters and one undecodable line, every line an error that did not say why."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return True
    half = len(head) // 2
    return half >= 8 and max(head[0::2].count(0), head[1::2].count(0)) > 0.8 * half


def _json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def header_names(line: str) -> set[str]:
    """The column names ``line`` has read as a CSV header (none when it is not one)."""
    try:
        return {name.strip().lower() for name in next(csv.reader([line], strict=True), [])}
    except csv.Error:
        return set()


def is_json_array(first_line: str, *, only_line: bool) -> bool:
    """A file whose first line opens a JSON array (not a CSV header that happens to start
    with "[", such as "[id],text,label"): a pretty-printed one (its first line is not JSON
    on its own), or one on a single line that is the whole file. A first line that is a
    whole array with lines after it is one bad JSONL line, told as such with the others."""
    if not first_line.startswith("[") or {"text", "label"} & header_names(first_line):
        return False
    try:
        json.loads(first_line)
    except ValueError:
        return True
    return only_line
