"""A text as the encoders' tokenizer reads it, for the result cache's keys
(``workers.contract.result_cache_keys``): the API and the workers key rows alike, and two
texts share a row only if the model reads them alike. The ``tokenizers`` package only (Rust,
no torch): the API imports it."""

from __future__ import annotations

import functools
import re
from typing import Any

# What the encoders' tokenizer (BertNormalizer in every base model's tokenizer.json: clean
# text, Chinese characters spaced, lower case with accents stripped) does to ASCII: control
# characters dropped, tab, newline and carriage return made spaces. (Lower case is str.lower.)
_ASCII_CLEAN = {c: None for c in (*range(0x20), 0x7F)} | {ord(c): " " for c in "\t\n\r"}


@functools.cache
def _bert_normalizer() -> Any:
    from tokenizers.normalizers import BertNormalizer

    return BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )


# The tokenizer's special tokens, which it finds in the text as written, before normalising
# it (``"normalized": false`` in tokenizer.json): "[MASK]" is one token, "[mask]" four.
_SPECIAL_TOKENS = re.compile(r"(\[CLS\]|\[SEP\]|\[MASK\]|\[UNK\]|\[PAD\])")
# Between the pieces of a text cut at its special tokens: a character no piece keeps (the
# normaliser drops NUL).
_CUT = "\x00"


def text_as_read(text: str) -> str:
    """``text`` as the encoders' tokenizer reads it: cut at its special tokens, which are
    kept as written, and each piece as its normaliser leaves it, with runs of spaces made one
    and the ends stripped (its pre-tokenizer splits on them). Two texts with the same form
    have the same token ids; the converse need not hold (other spaces than U+0020 stay
    apart), which costs a cache miss at most.

    NOTE: the tokenizer's own normaliser, not an approximation: NFKC and str.split() (the
    key before) made the ligature fi, full-width letters and characters the tokenizer drops
    read as the plain text, and a cached answer (and token count) was served for a text the
    model reads otherwise (a review: a full-width BAD answered bad 0.98, where the model
    said good 0.73); and "[MASK]" and "[mask]", lower-cased alike, were one key (a
    review)."""
    if "[" in text and len(pieces := _SPECIAL_TOKENS.split(text)) > 1:
        # (odd places: the special tokens themselves)
        return _CUT.join(p if i % 2 else _normalised(p) for i, p in enumerate(pieces))
    return _normalised(text)


def _normalised(text: str) -> str:
    if text.isascii():  # the normaliser's work on ASCII, without a call into it (~20 us)
        if not text.isprintable():
            text = text.translate(_ASCII_CLEAN)
        return " ".join(text.lower().split())  # (only U+0020 is left to split on)
    return " ".join(part for part in _bert_normalizer().normalize_str(text).split(" ") if part)
