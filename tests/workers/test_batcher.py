"""The dynamic batcher: right answers under concurrency, honest cost shares, clean stops."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import pytest
import torch

from workers.runtime.batcher import (
    BatcherClosedError,
    BatcherOverloadedError,
    DynamicBatcher,
    plan_sub_batches,
)
from workers.runtime.encoder import Encoder

WORDS = (
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
)


def _text(i: int) -> str:
    # Varied lengths (3..60 words) so batches mix short and long texts.
    return " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(3 + (i * 13) % 58))


def test_concurrent_submissions_each_get_their_own_embedding(encoder: Encoder) -> None:
    texts = [_text(i) for i in range(48)]
    alone = [encoder.embed([t])[0] for t in texts]  # one text per forward pass
    batcher = DynamicBatcher(
        encoder.embed_ids, max_batch_tokens=2048, max_batch_size=32, max_wait_ms=20
    )
    barrier = threading.Barrier(16)

    def request(chunk: int) -> list[torch.Tensor]:
        mine = texts[chunk * 3 : chunk * 3 + 3]
        barrier.wait()  # all threads submit at once, so their texts share batches
        futures = batcher.submit_many([t.ids for t in encoder.tokenize(mine)])
        return [f.result(timeout=30).vector for f in futures]

    try:
        with ThreadPoolExecutor(16) as pool:
            results = [v for chunk in pool.map(request, range(16)) for v in chunk]
        stats = batcher.stats()
    finally:
        batcher.close()
    for got, want in zip(results, alone, strict=True):
        assert torch.allclose(got, want, atol=1e-4)
    assert stats.texts == 48
    assert stats.forwards < 48 / 2  # they really were batched
    assert stats.padded_tokens < 1.25 * stats.real_tokens  # length bucketing cut padding


def test_compute_shares_split_batch_time_by_tokens(encoder: Encoder) -> None:
    batcher = DynamicBatcher(
        encoder.embed_ids, max_batch_tokens=8192, max_batch_size=64, max_wait_ms=5
    )
    try:
        tokenized = encoder.tokenize([_text(i) for i in range(40)])
        results = [f.result(timeout=30) for f in batcher.submit_many([t.ids for t in tokenized])]
        stats = batcher.stats()
        # Four texts of similar length go in one forward pass: shares are then exactly
        # proportional to each text's tokens.
        few = encoder.tokenize([" ".join(WORDS[:n]) for n in (4, 6, 8, 10)])
        shares = [f.result(timeout=30) for f in batcher.submit_many([t.ids for t in few])]
        assert batcher.stats().forwards == stats.forwards + 1
    finally:
        batcher.close()
    # Every millisecond the model was busy is billed to someone, and nothing more.
    assert sum(r.compute_ms for r in results) == pytest.approx(stats.busy_ms, rel=1e-9)
    per_token = [r.compute_ms / t.tokens for r, t in zip(shares, few, strict=True)]
    assert max(per_token) == pytest.approx(min(per_token), rel=1e-9)


def test_plan_cuts_where_padding_costs_more_than_a_forward_pass() -> None:
    # Eight short texts and two long ones: padding the short ones to 200 would waste more
    # than one extra forward pass costs.
    assert plan_sub_batches([10] * 8 + [200] * 2, max_tokens=8192, max_size=64) == [8, 10]
    # Similar lengths stay together.
    assert plan_sub_batches([30, 31, 32, 33], max_tokens=8192, max_size=64) == [4]
    # The token budget and the row cap are hard limits; one over-long row still runs.
    assert plan_sub_batches([100] * 6, max_tokens=250, max_size=64) == [2, 4, 6]
    ends = plan_sub_batches([10] * 5, max_tokens=8192, max_size=2)
    assert ends[-1] == 5 and all(b - a <= 2 for a, b in pairwise([0, *ends]))
    assert plan_sub_batches([300], max_tokens=256, max_size=8) == [1]


def test_a_gpu_sized_batch_is_cut_within_the_limits_quickly() -> None:
    lengths = sorted([20 + (i * 7) % 31 for i in range(1024)] + [600])
    began = time.perf_counter()
    ends = plan_sub_batches(lengths, max_tokens=32768, max_size=1024)
    assert time.perf_counter() - began < 0.02  # the exact planner took ~125 ms here
    assert ends[-1] == len(lengths)
    for start, end in pairwise([0, *ends]):
        rows = end - start
        assert rows == 1 or (rows <= 1024 and rows * lengths[end - 1] <= 32768)
    # Filled: no two neighbouring sub-batches would have fitted in one.
    assert len(ends) <= 3


def test_a_failing_forward_pass_fails_its_callers_not_the_batcher() -> None:
    calls = 0

    def flaky(batch: Sequence[Sequence[int]]) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("out of memory")
        return torch.ones(len(batch), 4)

    batcher = DynamicBatcher(flaky, max_batch_tokens=1024, max_batch_size=8, max_wait_ms=1)
    try:
        first = batcher.submit([1, 2, 3])
        with pytest.raises(RuntimeError, match="out of memory"):
            first.result(timeout=5)
        assert batcher.submit([1, 2]).result(timeout=5).vector.shape == (4,)
    finally:
        batcher.close()


def _gated(*, max_batch_size: int) -> tuple[DynamicBatcher, threading.Event, list[list[int]]]:
    """A batcher whose forward passes wait at a gate and record each pass's first ids."""
    gate = threading.Event()
    passes: list[list[int]] = []

    def recorded(batch: Sequence[Sequence[int]]) -> torch.Tensor:
        gate.wait(5)
        passes.append([ids[0] for ids in batch])
        return torch.ones(len(batch), 4)

    batcher = DynamicBatcher(
        recorded, max_batch_tokens=10_000, max_batch_size=max_batch_size, max_wait_ms=0
    )
    return batcher, gate, passes


def test_a_call_of_hundreds_of_texts_does_not_hold_a_short_call_behind_it() -> None:
    """An owner's turns go to its call with the fewest texts left: a one-text call queued
    behind a call of 300 (a few-shot request's examples) rides the next forward pass, first,
    not the 38th."""
    batcher, gate, passes = _gated(max_batch_size=8)
    try:
        first = batcher.submit([0])  # the model thread takes it and waits at the gate
        time.sleep(0.1)
        big = batcher.submit_many([[1]] * 300)
        small = batcher.submit_many([[2]])
        gate.set()
        small[0].result(timeout=5)
        assert all(f.result(timeout=10).vector.shape == (4,) for f in [first, *big])
    finally:
        batcher.close()
    assert passes[1] == [2, 1, 1, 1, 1, 1, 1, 1]  # the small call's text in the next pass
    assert sum(len(p) for p in passes) == 302


def test_tenants_take_turns_not_calls() -> None:
    """One tenant's four 100-text calls and another tenant's one: the turns go round the
    tenants, so the lone tenant gets every other text of each pass (per call, it got one
    text in five), and the busy tenant's turns go to one call until it ends, then the next:
    each ends as soon as it can (shared out among them, the four ended together, last)."""
    batcher, gate, passes = _gated(max_batch_size=8)
    try:
        first = batcher.submit([0])  # the model thread takes it and waits at the gate
        time.sleep(0.1)
        busy = [batcher.submit_many([[call]] * 100, owner="busy") for call in (1, 2, 3, 4)]
        lone = batcher.submit_many([[9]] * 100, owner="lone")
        gate.set()
        assert all(f.result(timeout=10).vector.shape == (4,) for f in [first, *lone])
        assert all(f.result(timeout=10).vector.shape == (4,) for call in busy for f in call)
    finally:
        batcher.close()
    assert passes[1] == [1, 9, 1, 9, 1, 9, 1, 9]
    # The lone tenant's 100 texts are done once 200 have been computed, not 500; and so
    # is the busy tenant's first call, the others then one after another.
    done = [n for n, texts in enumerate(passes) if 9 in texts][-1]
    assert sum(len(p) for p in passes[1 : done + 1]) == 200
    order = [text for p in passes[1:] for text in p if text != 9]
    assert order == [1] * 100 + [2] * 100 + [3] * 100 + [4] * 100


def test_a_short_call_goes_before_an_owners_longer_ones_whenever_it_comes() -> None:
    """A call that arrives while an owner's long call is being served, with fewer texts than
    that call has left, is served first; among calls as long, the oldest first."""
    batcher, gate, passes = _gated(max_batch_size=4)
    try:
        first = batcher.submit([0])  # the model thread takes it and waits at the gate
        time.sleep(0.1)
        long_ = batcher.submit_many([[1]] * 12)
        same = batcher.submit_many([[2]] * 12)
        short = batcher.submit_many([[3]] * 2)
        gate.set()
        futures = [first, *long_, *same, *short]
        assert all(f.result(timeout=10).vector.shape == (4,) for f in futures)
    finally:
        batcher.close()
    assert passes[1:] == [[3, 3, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 2, 2]] + [
        [2, 2, 2, 2]
    ] * 2 + [[2, 2]]


def test_the_turns_go_on_across_passes() -> None:
    """A pass that fills stops at a tenant whose turn then comes first in the next one:
    three tenants with a pass of four, not the first two tenants' texts first."""
    batcher, gate, passes = _gated(max_batch_size=4)
    try:
        first = batcher.submit([0])  # the model thread takes it and waits at the gate
        time.sleep(0.1)
        futures = [f for t in (1, 2, 3) for f in batcher.submit_many([[t]] * 4, owner=t)]
        gate.set()
        assert all(f.result(timeout=10).vector.shape == (4,) for f in [first, *futures])
    finally:
        batcher.close()
    assert passes[1:] == [[1, 2, 3, 1], [2, 3, 1, 2], [3, 1, 2, 3]]


def test_texts_whose_caller_gave_up_take_no_room_in_a_pass() -> None:
    """A call past its deadline has its waiting texts cancelled (classify_as_done): the next
    pass is filled with other texts, not cut short by the dropped ones."""
    batcher, gate, passes = _gated(max_batch_size=8)
    try:
        first = batcher.submit([0])  # the model thread takes it and waits at the gate
        time.sleep(0.1)
        given_up = batcher.submit_many([[1]] * 8, owner="late")
        waiting = batcher.submit_many([[2]] * 8, owner="other")
        assert all(f.cancel() for f in given_up)
        gate.set()
        assert all(f.result(timeout=10).vector.shape == (4,) for f in [first, *waiting])
    finally:
        batcher.close()
    assert passes[1:] == [[2] * 8]


def test_bounded_queue_pushes_back_and_close_drains() -> None:
    release = threading.Event()

    def slow(batch: Sequence[Sequence[int]]) -> torch.Tensor:
        release.wait(5)
        return torch.zeros(len(batch), 4)

    batcher = DynamicBatcher(
        slow, max_batch_tokens=1024, max_batch_size=1, max_wait_ms=0, max_pending=2
    )
    running = batcher.submit([1])  # taken by the model thread, which now blocks
    queued = batcher.submit_many([[2], [3]])
    with pytest.raises(BatcherOverloadedError):
        batcher.submit([4], timeout=0.2)
    release.set()
    batcher.close()
    # Work accepted before close() was finished, not dropped.
    assert running.done() and all(f.result(timeout=0).vector.shape == (4,) for f in queued)
    with pytest.raises(BatcherClosedError):
        batcher.submit([5])


def test_model_threads_run_forwards_side_by_side_with_right_answers_and_shares(
    encoder: Encoder,
) -> None:
    """Two model threads: each text still gets its own embedding, both threads run forward
    passes, and the shares add up to the machine time used (wall / threads)."""
    texts = [_text(i) for i in range(64)]
    alone = [encoder.embed([t])[0] for t in texts]
    ran_on: set[str] = set()

    def embed(batch: Sequence[Sequence[int]]) -> torch.Tensor:
        ran_on.add(threading.current_thread().name)
        return encoder.embed_ids(batch)

    batcher = DynamicBatcher(
        embed, max_batch_tokens=512, max_batch_size=8, max_wait_ms=1, model_threads=2
    )
    try:
        futures = batcher.submit_many([t.ids for t in encoder.tokenize(texts)])
        results = [f.result(timeout=60) for f in futures]
        stats = batcher.stats()
    finally:
        batcher.close()
    for got, want in zip(results, alone, strict=True):
        assert torch.allclose(got.vector, want, atol=1e-4)
    assert len(ran_on) == 2
    assert sum(r.compute_ms for r in results) == pytest.approx(stats.busy_ms, rel=1e-9)
