"""The platform-side usage consumer: reads workers' usage events from the Redis stream
``usage:events`` as consumer group ``ledger`` and appends them to the ledger in bulk.

At least once: entries are acknowledged (and deleted from the stream) only after the
transaction that stored them commits, so a crash re-delivers them, and the ledger's unique
event id turns the re-delivery into a no-op. Entries a dead consumer left unacknowledged
are claimed by a live one after ``STALE_MS``. Events that can never be stored go to a
dead-letter list in Redis (``usage:dead``) for an operator instead of blocking the stream.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import redis
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection

from workers.contract import USAGE_GROUP, USAGE_STREAM

from .metrics import USAGE_EVENTS
from .services import usage_record_bulk

logger = logging.getLogger(__name__)

DEAD_LETTER_KEY = "usage:dead"
STALE_MS = 60_000
CLAIM_EVERY_S = 10.0

Entry = tuple[bytes, dict[bytes, bytes]]


def _decode(fields: dict[bytes, bytes]) -> Any:
    try:
        return json.loads(fields[b"event"])
    except (KeyError, ValueError):
        return {"unreadable": {k.decode(errors="replace"): v.decode(errors="replace")
                               for k, v in fields.items()}}  # fmt: skip


class UsageConsumer:
    def __init__(
        self,
        *,
        url: str | None = None,
        batch_size: int | None = None,
        flush_interval: float | None = None,
        name: str | None = None,
    ) -> None:
        self.client = redis.Redis.from_url(url or settings.REDIS_URL, socket_timeout=30)
        self.batch_size = batch_size or settings.USAGE_BATCH_SIZE
        self.flush_interval = flush_interval or settings.USAGE_FLUSH_INTERVAL_S
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self._claimed_at = 0.0

    def _ensure_group(self) -> None:
        try:
            self.client.xgroup_create(USAGE_STREAM, USAGE_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _read(self, stream_id: str, block_ms: int | None) -> list[Entry]:
        reply: Any = self.client.xreadgroup(
            USAGE_GROUP, self.name, {USAGE_STREAM: stream_id},
            count=self.batch_size, block=block_ms,
        )  # fmt: skip
        return list(reply[0][1]) if reply else []

    def _claim_stale(self) -> list[Entry]:
        """Entries another consumer read but never acknowledged (it died)."""
        self._claimed_at = time.monotonic()
        reply: Any = self.client.xautoclaim(
            USAGE_STREAM, USAGE_GROUP, self.name, min_idle_time=STALE_MS,
            start_id="0-0", count=self.batch_size,
        )  # fmt: skip
        return [entry for entry in reply[1] if entry and entry[1]]

    def flush(self, entries: list[Entry]) -> int:
        """Store the entries' events, then acknowledge them. Returns rows inserted."""
        if not entries:
            return 0
        events = [_decode(fields) for _, fields in entries]
        try:
            if not connection.in_atomic_block:
                # A long-lived process must drop connections the database has closed; but
                # a caller that holds a transaction (a test) owns its connection.
                close_old_connections()
            outcome = usage_record_bulk(events=events)
        except DatabaseError:
            # Not acknowledged: they stay pending and are read again (claimed when stale).
            logger.exception("usage batch of %d not stored; will retry", len(entries))
            time.sleep(1.0)
            return 0
        pipe = self.client.pipeline(transaction=False)
        for event, why in outcome.rejected:
            logger.error("usage event rejected (%s): %r", why, event)
            pipe.rpush(DEAD_LETTER_KEY, json.dumps({"event": event, "why": why}, default=str))
        ids = [entry_id for entry_id, _ in entries]
        pipe.xack(USAGE_STREAM, USAGE_GROUP, *ids)
        pipe.xdel(USAGE_STREAM, *ids)
        pipe.execute()
        USAGE_EVENTS.labels("recorded").inc(outcome.inserted)
        USAGE_EVENTS.labels("duplicate").inc(outcome.duplicates)
        USAGE_EVENTS.labels("rejected").inc(len(outcome.rejected))
        return outcome.inserted

    def run(
        self, *, should_stop: Callable[[], bool] = lambda: False, until_idle: bool = False
    ) -> int:
        """Consume until ``should_stop()`` (or, with ``until_idle``, until the stream has
        nothing new for one flush interval). Returns rows inserted."""
        self._ensure_group()
        # What this consumer name read before a restart and never acknowledged.
        inserted = self.flush(self._read("0", None))
        block_ms = max(int(self.flush_interval * 1000), 1)
        while not should_stop():
            buffer: list[Entry] = []
            if time.monotonic() - self._claimed_at > CLAIM_EVERY_S:
                buffer += self._claim_stale()
            deadline = time.monotonic() + self.flush_interval
            while len(buffer) < self.batch_size and not should_stop():
                left = int((deadline - time.monotonic()) * 1000)
                if left <= 0:
                    break
                entries = self._read(">", min(left, block_ms))
                if not entries:
                    break
                buffer += entries
            if not buffer and until_idle:
                break
            inserted += self.flush(buffer)
        return inserted
