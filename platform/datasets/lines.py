"""An uploaded file's lines, numbered from 1, read afresh on each pass rather than kept.

NOTE: validation used to hold every line as a (number, text) pair beside the file, ~140
bytes a line before any row was parsed: a 20 MB CSV of 2.2 million short rows (the upload
limit) peaked at 861 MB over the API process's own memory, past the API pod's 1 GiB
limit. A pass over ``FileLines`` holds one line at a time."""

from __future__ import annotations

import functools
from collections.abc import Iterator

BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark, as Excel writes CSV


class FileLines:
    """``for number, text in lines``: each line that is UTF-8, without its newline and any
    carriage returns ending it. Lines are split at b"\\n" only, as ``bytes.split`` would:
    a file that ends with a newline has an empty last line."""

    def __init__(self, data: bytes) -> None:
        self._data = data[len(BOM) :] if data.startswith(BOM) else data
        try:
            # (UTF-8 as a whole is UTF-8 line by line: no character's bytes hold b"\n")
            self._text: str | None = self._data.decode("utf-8")
        except UnicodeDecodeError:
            self._text = None

    @property
    def all_utf8(self) -> bool:
        """Whether every line is UTF-8: the n-th line read is then line n."""
        return self._text is not None

    @functools.cached_property
    def count(self) -> int:
        return self._data.count(b"\n") + 1

    def undecodable(self) -> Iterator[int]:
        """The numbers of the lines that are not UTF-8, in order."""
        if self._text is not None:
            return
        for number, raw in self._raw():
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                yield number

    def __iter__(self) -> Iterator[tuple[int, str]]:
        text = self._text
        if text is None:
            for number, raw in self._raw():
                try:
                    yield number, raw.decode("utf-8").rstrip("\r")
                except UnicodeDecodeError:
                    continue
            return
        start, number = 0, 1
        while (end := text.find("\n", start)) >= 0:
            yield number, text[start:end].rstrip("\r")
            start, number = end + 1, number + 1
        yield number, text[start:].rstrip("\r")

    def _raw(self) -> Iterator[tuple[int, bytes]]:
        data, start, number = self._data, 0, 1
        while (end := data.find(b"\n", start)) >= 0:
            yield number, data[start:end]
            start, number = end + 1, number + 1
        yield number, data[start:]
