"""An uploaded file's lines, numbered from 1, read afresh on each pass rather than kept.

NOTE: validation used to hold every line as a (number, text) pair beside the file, ~140
bytes a line before any row was parsed: a 20 MB CSV of 2.2 million short rows (the upload
limit) peaked at 861 MB over the API process's own memory, past the API pod's 1 GiB
limit. A pass over ``FileLines`` holds one line at a time."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import AnyStr

BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark, as Excel writes CSV
TEXT_BOM = "\ufeff"


class FileLines:
    """``for number, text in lines``: each line that is UTF-8, without its newline, any
    carriage returns ending it and a byte order mark starting it (two exported files joined
    with ``cat``). Lines are split at b"\\n", as ``bytes.split`` would (a file that ends
    with a newline has an empty last line), or at b"\\r" too in a file whose lines end in a
    lone CR (``cr_line_breaks``)."""

    def __init__(self, data: bytes) -> None:
        data = data[len(BOM) :] if data.startswith(BOM) else data
        self._data = data.replace(b"\r", b"\n") if cr_line_breaks(data) else data

    @functools.cached_property
    def _text(self) -> str | None:
        try:
            # (UTF-8 as a whole is UTF-8 line by line: no character's bytes hold b"\n")
            return self._data.decode("utf-8")
        except UnicodeDecodeError:
            return None

    @property
    def all_utf8(self) -> bool:
        """Whether every line is UTF-8: the n-th line read is then line n."""
        return self._text is not None

    @functools.cached_property
    def count(self) -> int:
        return self._data.count(b"\n") + 1

    @property
    def counted(self) -> int:
        """The lines, an empty one after a final line break left out: counted in C, before
        any is decoded or split out (a file of millions of lines is refused so)."""
        return self.count - self._data.endswith(b"\n")

    def undecodable(self) -> Iterator[int]:
        """The numbers of the lines that are not UTF-8, in order."""
        if self._text is not None:
            return
        for number, raw in _numbered(self._data, b"\n"):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                yield number

    def __iter__(self) -> Iterator[tuple[int, str]]:
        if self._text is not None:
            for number, line in _numbered(self._text, "\n"):
                yield number, line.rstrip("\r").removeprefix(TEXT_BOM)
            return
        for number, raw in _numbered(self._data, b"\n"):
            try:
                yield number, raw.decode("utf-8").rstrip("\r").removeprefix(TEXT_BOM)
            except UnicodeDecodeError:
                continue


def cr_line_breaks(data: bytes) -> bool:
    """Whether ``data``'s lines end in a lone CR (classic Mac line endings, Excel's "CSV
    (Macintosh)"): no CRLF in it, and more CRs than LFs (a tool may have added one LF at the
    end)."""
    return b"\r\n" not in data and data.count(b"\r") > data.count(b"\n")


def _numbered(data: AnyStr, newline: AnyStr) -> Iterator[tuple[int, AnyStr]]:
    """``data.split(newline)``, numbered from 1, one piece at a time."""
    start, number = 0, 1
    while (end := data.find(newline, start)) >= 0:
        yield number, data[start:end]
        start, number = end + 1, number + 1
    yield number, data[start:]
