from __future__ import annotations

import torch

from workers.runtime.cache import EmbeddingCache


def test_least_recently_used_entry_is_evicted() -> None:
    cache = EmbeddingCache(2)
    a, b, c = torch.zeros(2), torch.ones(2), torch.full((2,), 2.0)
    cache.put(("m", "a"), a)
    cache.put(("m", "b"), b)
    assert cache.get(("m", "a")) is a  # "a" is now the most recent
    cache.put(("m", "c"), c)
    assert cache.get(("m", "b")) is None
    assert cache.get(("m", "a")) is a and cache.get(("m", "c")) is c
    assert (cache.hits, cache.misses, len(cache)) == (3, 1, 2)


def test_keys_are_per_encoder_and_size_zero_disables() -> None:
    cache = EmbeddingCache(10)
    cache.put(("m1", "x"), torch.zeros(1))
    assert cache.get(("m2", "x")) is None
    off = EmbeddingCache(0)
    off.put(("m", "x"), torch.zeros(1))
    assert off.get(("m", "x")) is None
