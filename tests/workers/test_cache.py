from __future__ import annotations

import torch

from workers.runtime.cache import EmbeddingCache


def test_least_recently_used_entry_is_evicted() -> None:
    cache = EmbeddingCache(2)
    a, b, c = torch.zeros(2), torch.ones(2), torch.full((2,), 2.0)
    cache.put(("m", "t", "a"), a)
    cache.put(("m", "t", "b"), b)
    assert cache.get(("m", "t", "a")) is a  # "a" is now the most recent
    cache.put(("m", "t", "c"), c)
    assert cache.get(("m", "t", "b")) is None
    assert cache.get(("m", "t", "a")) is a and cache.get(("m", "t", "c")) is c
    assert (cache.hits, cache.misses, len(cache)) == (3, 1, 2)


def test_keys_are_per_encoder_and_tenant_and_size_zero_disables() -> None:
    cache = EmbeddingCache(10)
    cache.put(("m1", "t", "x"), torch.zeros(1))
    assert cache.get(("m2", "t", "x")) is None
    assert cache.get(("m1", "other tenant", "x")) is None
    off = EmbeddingCache(0)
    off.put(("m", "t", "x"), torch.zeros(1))
    assert off.get(("m", "t", "x")) is None
