"""A worker's presence in Redis: every few seconds each worker writes what it is (its pool and
hardware price, device, precision, models, batch settings) and what it has been doing (texts
embedded, forward passes, how busy its model threads were, the fine-tuning job it runs).
The operators' Workers page and ``/metrics`` read it (``platform/ops/workers.py``); the worker
still never touches the database.

Two keys: the sorted set ``SEEN_KEY`` (worker name -> unix time of its last report) and one
JSON report per worker under ``report_key(name)``, kept ``REPORT_TTL_S`` after the last
write, so a worker that stopped or died is still shown, as such, for that long."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis

from workers.contract import CONTRACT_VERSION
from workers.settings import WorkerSettings

logger = logging.getLogger(__name__)

SEEN_KEY = "workers:seen"
REPORT_TTL_S = 3600
# A worker not heard from for this many of its own intervals is shown as silent: dead, cut
# off from Redis, or stalled (``platform/ops/workers.py``).
SILENT_AFTER_BEATS = 3

# What the running process is doing beyond serving (a fine-tuning job), for its report.
_activity: dict[str, str | None] = {"now": None}


def report_key(name: str) -> str:
    return f"workers:report:{name}"


@contextmanager
def busy_with(activity: str) -> Iterator[None]:
    """Name what this worker does while the block runs (``"fine-tuning ftjob_…"``)."""
    _activity["now"] = activity
    try:
        yield
    finally:
        _activity["now"] = None


Counters = dict[str, float]
# Read at each report: the worker's cumulative counters (``texts``, ``forwards``,
# ``busy_ms`` and ``busy_ms:<base model>``, ``real_tokens``, ``padded_tokens``) and what it
# serves now (``models``, ``batches``: its batch limits, ``model_threads``: its forward
# passes side by side, ``fine_tuned_loaded``), which the report carries as is.
StatsReader = Callable[[], tuple[Counters, dict[str, Any]]]


def describe(
    *, name: str, queues: list[str], settings: WorkerSettings, started_at: float
) -> dict[str, Any]:
    """The parts of a report that do not change while the worker runs."""
    return {
        "name": name, "queues": sorted(queues), "host": socket.gethostname(), "pid": os.getpid(),
        "started_at": started_at, "contract": CONTRACT_VERSION, "pool": settings.pool,
        "price_per_hour": settings.price_per_hour, "currency": settings.currency,
        "torch_threads": settings.inference_torch_threads,
        "max_wait_ms": settings.max_wait_ms,
    }  # fmt: skip


class Presence:
    """Writes this worker's report every ``interval`` seconds on a daemon thread, and a last
    one, ``state: stopped``, when stopped (from the same thread: no other write can follow
    it). A Redis that cannot be reached is retried at the next beat: presence is for
    operators, never in the way of serving or of a shutdown."""

    # How long stop() waits for the goodbye: a Redis that is away costs a shutdown no more.
    STOP_WAIT_S = 3.0

    def __init__(
        self,
        client: redis.Redis,
        static: dict[str, Any],
        read_stats: StatsReader,
        *,
        interval: float,
    ) -> None:
        self._client = client
        self._static = static
        self._read_stats = read_stats
        self._interval = interval
        self._stop = threading.Event()
        self._last: tuple[float, Counters] | None = None  # (monotonic time, counters)
        self._thread = threading.Thread(target=self._run, name="presence", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.STOP_WAIT_S)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.beat(state="live")
            self._stop.wait(self._interval)
        self.beat(state="stopped")

    def report(self, *, state: str, now: float) -> dict[str, Any]:
        """The report at Redis time ``now`` (what readers compare it with: the hosts'
        clocks may disagree)."""
        tick = time.monotonic()
        counters, serving = self._read_stats()
        recent: dict[str, float | None] = {"texts_per_s": None, "busy_pct": None}
        if self._last is not None and tick > self._last[0]:
            elapsed = tick - self._last[0]
            before = self._last[1]
            recent["texts_per_s"] = (counters["texts"] - before.get("texts", 0)) / elapsed
            # NOTE: a batcher counts a forward's time divided by its model threads, so its
            # busy_ms is the share of its threads' time in forward passes. Each base model
            # has its own batcher ("busy_ms:<model>"): busy is the busiest one's.
            keys = [key for key in counters if key.startswith("busy_ms:")] or ["busy_ms"]
            busy_ms = max(counters[key] - before.get(key, 0) for key in keys)
            recent["busy_pct"] = 100 * busy_ms / (elapsed * 1000)
        self._last = (tick, counters)
        return {
            **self._static, **serving, "state": state, "reported_at": now,
            "activity": _activity["now"], "totals": counters, "recent": recent,
            "interval_s": self._interval,
        }  # fmt: skip

    def beat(self, *, state: str) -> None:
        try:
            seconds, micros = self._client.time()
            now = seconds + micros / 1e6
            report = self.report(state=state, now=now)
            name = str(self._static["name"])
            pipe = self._client.pipeline(transaction=True)
            pipe.set(report_key(name), json.dumps(report), ex=REPORT_TTL_S)
            pipe.zadd(SEEN_KEY, {name: now})
            # Names whose reports have expired: nothing left to show for them.
            pipe.zremrangebyscore(SEEN_KEY, "-inf", now - REPORT_TTL_S)
            pipe.execute()
        except Exception:  # Redis away, or a stats reader that failed: the next beat retries
            logger.warning("worker presence not written", exc_info=True)
