"""An in-process dynamic batcher: many request threads submit tokenized texts; one background
thread owns the model and runs them in length-bucketed forward passes.

Why: on CPU a forward pass of one text costs ~3x per token what a batch of eight does, and
padding a short text to a long neighbour's length is pure waste. So the batcher gathers what
arrives within a few milliseconds, sorts it by length and cuts it into sub-batches that
minimise padded tokens plus a per-forward overhead, within the token budget.

Cost accounting: each sub-batch's wall time is split across its items by their share of
real (unpadded) tokens, so the shares of all items sum to the time the model was busy.

Rows may carry a tag for the model (a fine-tuned model's LoRA adapter): tagged and untagged
rows share forward passes, and the tags reach the model as one list per pass.
"""

from __future__ import annotations

import bisect
import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

# A forward pass costs about as much fixed overhead as this many tokens of work (measured on
# a 2-core CPU: batch 1 of 16 tokens ~8 ms vs ~0.15 ms per token in a batch). Used to decide
# when splitting a batch to save padding is worth one more forward pass.
FORWARD_OVERHEAD_TOKENS = 48

# ``embed(ids)``, or ``embed(ids, tags)`` when a row of the pass has a tag (one per row).
EmbedFn = Callable[..., torch.Tensor]


class BatcherClosedError(RuntimeError):
    """The batcher is shut down and takes no more work."""


class BatcherOverloadedError(RuntimeError):
    """Too many texts are waiting; the caller should fail fast rather than queue forever."""


class Embedded(NamedTuple):
    vector: torch.Tensor  # (dim,) float32, unit length
    compute_ms: float  # this text's share of its forward pass's wall time


@dataclass(eq=False, slots=True)
class _Item:
    ids: Sequence[int]
    enqueued: float
    tag: Any = None
    future: Future[Embedded] = field(default_factory=Future)


@dataclass(slots=True)
class BatcherStats:
    texts: int = 0
    forwards: int = 0
    padded_tokens: int = 0
    real_tokens: int = 0
    busy_ms: float = 0.0


# Batches longer than this are cut greedily: the dynamic programme below costs O(rows x
# rows per sub-batch) in Python, 125 ms for a GPU-sized batch of 1,024 rows (0.5 ms for the
# CPU's 64), which is more than the GPU's forward passes of that batch take.
PLAN_EXACT_MAX_ROWS = 128


def plan_sub_batches(lengths: Sequence[int], *, max_tokens: int, max_size: int) -> list[int]:
    """Cut lengths sorted ascending into contiguous sub-batches; returns the end indices.

    Minimises sum(rows x longest + FORWARD_OVERHEAD_TOKENS) by dynamic programming, subject to
    each sub-batch having at most ``max_size`` rows and ``max_tokens`` padded tokens (a single
    row is always allowed, however long). Above ``PLAN_EXACT_MAX_ROWS`` rows, each
    sub-batch is filled as far as the limits allow instead (sorted, so padding stays small).
    """
    n = len(lengths)
    if n > PLAN_EXACT_MAX_ROWS:
        return _plan_greedy(lengths, max_tokens=max_tokens, max_size=max_size)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = lengths[j - 1]
        for i in range(j - 1, -1, -1):
            rows = j - i
            if rows > 1 and (rows > max_size or rows * longest > max_tokens):
                break
            cost = best[i] + FORWARD_OVERHEAD_TOKENS + rows * longest
            if cost < best[j]:
                best[j], cut[j] = cost, i
    ends: list[int] = []
    j = n
    while j > 0:
        ends.append(j)
        j = cut[j]
    return ends[::-1]


def _plan_greedy(lengths: Sequence[int], *, max_tokens: int, max_size: int) -> list[int]:
    ends: list[int] = []
    start = 0
    for j in range(1, len(lengths) + 1):
        rows = j - start
        if rows > 1 and (rows > max_size or rows * lengths[j - 1] > max_tokens):
            ends.append(j - 1)
            start = j - 1
    ends.append(len(lengths))
    return ends


class DynamicBatcher:
    """Thread-safe: ``submit_many`` may be called from any number of threads."""

    def __init__(
        self,
        embed: EmbedFn,
        *,
        max_batch_tokens: int,
        max_batch_size: int,
        max_wait_ms: float,
        max_pending: int = 8192,
        name: str = "batcher",
        model_threads: int = 1,
    ) -> None:
        self._embed = embed
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self._max_pending = max_pending
        # Per owner (a tenant), its waiting calls (``submit_many``), each a queue of texts,
        # fewest texts left first; owners in turn order, the next to be served first: see
        # ``_collect``.
        self._owners: dict[Any, list[deque[_Item]]] = {}
        self._queued = 0
        self._queued_tokens = 0
        self._cond = threading.Condition()
        self._closed = False
        self._stats = BatcherStats()
        # NOTE: with more than one model thread, batches run side by side (each thread's
        # forward on its own core when torch's intra-op threads are 1): no thread waits at
        # a parallel region's barrier for a core that the API process took, which is what
        # two intra-op threads do on a machine shared with the API. Each forward's wall
        # time is then divided by the number of model threads when it is shared out, so
        # the shares still add up to the machine time the model used.
        self._model_threads = max(1, model_threads)
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{n}", daemon=True)
            for n in range(self._model_threads)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def model_threads(self) -> int:
        return self._model_threads

    def stats(self) -> BatcherStats:
        with self._cond:
            return dataclasses.replace(self._stats)

    def submit_many(
        self,
        batch: Sequence[Sequence[int]],
        *,
        tag: Any = None,
        owner: Any = None,
        timeout: float = 30.0,
    ) -> list[Future[Embedded]]:
        """Queue token id lists; each future resolves to its ``Embedded`` or an exception.

        Texts of one call are queued together, each with ``tag`` (passed to the model with
        its row), and share forward passes with the calls waiting beside them; ``owner``
        (the tenant) is whose turn they are taken in (``_collect``).
        Blocks while the queue is full (back-pressure), up to ``timeout`` seconds.
        """
        now = time.monotonic()
        items = [_Item(ids, now, tag) for ids in batch]
        if not items:
            return []

        def has_room() -> bool:
            # A call larger than the whole bound may still go alone into an empty queue.
            pending = self._queued
            return self._closed or not pending or pending + len(items) <= self._max_pending

        with self._cond:
            if not self._cond.wait_for(has_room, timeout=timeout):
                raise BatcherOverloadedError(f"{self._queued} texts already waiting")
            if self._closed:
                raise BatcherClosedError("batcher is closed")
            # After the owner's calls with as few texts or fewer: the call being served
            # only gets shorter, so the first is always the one with the fewest left.
            bisect.insort(self._owners.setdefault(owner, []), deque(items), key=len)
            self._queued += len(items)
            self._queued_tokens += sum(len(item.ids) for item in items)
            self._cond.notify_all()
        return [item.future for item in items]

    def submit(self, ids: Sequence[int], *, timeout: float = 30.0) -> Future[Embedded]:
        return self.submit_many([ids], timeout=timeout)[0]

    def close(self, *, timeout: float | None = 30.0) -> None:
        """Stop taking work, finish what is queued, and join the model thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            if threading.current_thread() is not thread:
                thread.join(timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- the model thread ------------------------------------------------------------------

    def _run(self) -> None:
        while (batch := self._collect()) is not None:
            try:
                self._process(batch)
            except Exception as exc:  # a bug here must not leave callers waiting forever
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)

    def _full(self) -> bool:
        return self._queued >= self.max_batch_size or self._queued_tokens >= self.max_batch_tokens

    def _collect(self) -> list[_Item] | None:
        """Wait for work, then for company: until the first waiting item has waited
        ``max_wait_ms`` (counted from when it was queued, so items that queued up during the
        previous forward pass go at once) or a full batch is waiting. Then take the waiting
        texts in turns: one text a turn, the turns going round the owners (tenants) with
        texts waiting. A call of hundreds of texts (a few-shot request's examples) shares
        each forward pass with other tenants' calls, rather than holding them for all of its
        passes (one such call held another tenant's one-input request past its 30 s
        deadline); and a tenant with many such calls at once gets one turn in each round, as
        every other tenant waiting does, not one per call (eight concurrent few-shot calls of
        one tenant took ~8/9 of the worker). An owner's turns go to its call with the fewest
        texts left (the oldest of those), so its calls end one after another, each as soon
        as it can, and a short one is not held behind a long one: shared out among them,
        eight 96-text calls that took a worker 72 s all ended together, past their 30 s
        deadline, none answered. The round goes on across batches: a batch that fills stops
        at an owner whose turn comes first in the next one."""
        with self._cond:
            self._cond.wait_for(lambda: self._owners or self._closed)
            if not self._owners:
                return None  # closed and drained
            oldest = min(call[0].enqueued for calls in self._owners.values() for call in calls)
            deadline = oldest + self.max_wait_s
            while not self._full() and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch: list[_Item] = []
            tokens = dropped = 0
            while self._owners:
                owner = next(iter(self._owners))  # whose turn it is
                calls = self._owners.pop(owner)
                call = calls[0]
                size = len(call[0].ids)
                if call[0].future.cancelled():  # its caller gave up: dropped, taking no room
                    call.popleft()
                    dropped += 1
                    self._queued_tokens -= size
                elif len(batch) >= self.max_batch_size or (
                    batch and tokens + size > self.max_batch_tokens
                ):
                    self._owners = {owner: calls, **self._owners}  # still its turn next
                    break
                else:
                    batch.append(call.popleft())
                    tokens += size
                if not call:
                    del calls[0]  # the owner's next turn goes to its next shortest call
                if calls:
                    self._owners[owner] = calls  # its next turn after every other owner's
            self._queued -= len(batch) + dropped
            self._queued_tokens -= tokens
            self._cond.notify_all()  # wake submitters waiting for room
        # Skip futures whose caller cancelled them while they waited.
        return [item for item in batch if item.future.set_running_or_notify_cancel()]

    def _process(self, batch: list[_Item]) -> None:
        batch.sort(key=lambda item: len(item.ids))
        ends = plan_sub_batches(
            [len(item.ids) for item in batch],
            max_tokens=self.max_batch_tokens,
            max_size=self.max_batch_size,
        )
        start = 0
        for end in ends:
            self._forward(batch[start:end])
            start = end

    def _forward(self, items: list[_Item]) -> None:
        began = time.perf_counter()
        ids = [item.ids for item in items]
        try:
            if any(item.tag is not None for item in items):
                vectors = self._embed(ids, [item.tag for item in items])
            else:
                vectors = self._embed(ids)
        except Exception as exc:  # every waiter of this sub-batch hears about it
            for item in items:
                item.future.set_exception(exc)
            return
        elapsed_ms = (time.perf_counter() - began) * 1000 / self._model_threads
        lengths = [len(item.ids) for item in items]
        real = max(sum(lengths), 1)
        with self._cond:  # before resolving, so a caller that got its result sees it counted
            s = self._stats
            s.texts += len(items)
            s.forwards += 1
            s.padded_tokens += len(items) * max(lengths)
            s.real_tokens += real
            s.busy_ms += elapsed_ms
        for row, (item, length) in enumerate(zip(items, lengths, strict=True)):
            item.future.set_result(Embedded(vectors[row], elapsed_ms * length / real))
