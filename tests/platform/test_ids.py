from __future__ import annotations

import string
from collections import Counter

from core.ids import new_id, random_token


def test_ids_are_prefixed_random_and_use_the_whole_alphabet() -> None:
    ids = {new_id("req") for _ in range(2000)}
    assert len(ids) == 2000
    assert all(i.startswith("req_") and len(i) == 28 for i in ids)
    counts = Counter("".join(random_token(24) for _ in range(4000)))
    assert set(counts) == set(string.ascii_letters + string.digits)
    # 96,000 draws over 62 characters: ~1,548 each (sd ~39). A biased mapping (b % 62 over
    # every byte) would give the first 8 characters of the alphabet 5 bytes of 256 instead
    # of 4: ~25 % more. Their mean against the rest's is within ~3 % when unbiased.
    alphabet = string.ascii_letters + string.digits
    first = sum(counts[c] for c in alphabet[:8]) / 8
    rest = sum(counts[c] for c in alphabet[8:]) / (len(alphabet) - 8)
    assert first < 1.1 * rest
