"""A thread-safe LRU of embeddings for label and example texts.

Customers send the same label set and examples with every call; embedding them once per
process turns a few forward passes per request into a dictionary look-up. Kept per tenant:
a hit shows in the call's compute time, and no tenant may learn what another has sent.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

CacheKey = tuple[str, str, str]  # (encoder id, tenant id, exact text embedded)


class EmbeddingCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: OrderedDict[CacheKey, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: CacheKey) -> torch.Tensor | None:
        with self._lock:
            vector = self._data.get(key)
            if vector is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return vector

    def put(self, key: CacheKey, vector: torch.Tensor) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._data[key] = vector
            self._data.move_to_end(key)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)
