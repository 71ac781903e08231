"""The platform-side usage consumer: reads workers' usage events off the ``usage`` queue and
appends them to the ledger in bulk.

At-least-once: messages are acknowledged only after the transaction that stored them
commits, so a crash re-delivers them, and the ledger's unique event id turns the
re-delivery into a no-op. Events that can never be stored go to a dead-letter list in Redis
(``usage:dead``) for an operator, instead of blocking the queue.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection
from kombu import Connection, Exchange
from kombu import Queue as KombuQueue

from workers.contract import USAGE_EXCHANGE, USAGE_ROUTING_KEY, Queue

from .metrics import USAGE_EVENTS
from .services import usage_record_bulk

logger = logging.getLogger(__name__)

DEAD_LETTER_KEY = "usage:dead"
usage_exchange = Exchange(USAGE_EXCHANGE, type="direct", durable=True)
usage_queue = KombuQueue(
    Queue.USAGE.value, usage_exchange, routing_key=USAGE_ROUTING_KEY, durable=True
)


class UsageConsumer:
    def __init__(
        self,
        *,
        url: str | None = None,
        batch_size: int | None = None,
        flush_interval: float | None = None,
    ) -> None:
        self.url = url or settings.REDIS_URL
        self.batch_size = batch_size or settings.USAGE_BATCH_SIZE
        self.flush_interval = flush_interval or settings.USAGE_FLUSH_INTERVAL_S
        self._buffer: list[tuple[Any, Any]] = []
        self._oldest = 0.0
        self._dead = redis.Redis.from_url(self.url)

    def _on_message(self, body: Any, message: Any) -> None:
        if not self._buffer:
            self._oldest = time.monotonic()
        self._buffer.append((body, message))

    def flush(self) -> int:
        """Store the buffered events, then acknowledge them. Returns rows inserted."""
        if not self._buffer:
            return 0
        batch, self._buffer = self._buffer, []
        try:
            if not connection.in_atomic_block:
                # A long-lived process must drop connections the database has closed; but
                # a caller that holds a transaction (a test) owns its connection.
                close_old_connections()
            outcome = usage_record_bulk(events=[body for body, _ in batch])
        except DatabaseError:
            logger.exception("usage batch of %d not stored; re-queued", len(batch))
            for _, message in batch:
                message.requeue()
            time.sleep(1.0)
            return 0
        for event, why in outcome.rejected:
            logger.error("usage event rejected (%s): %r", why, event)
            self._dead.rpush(DEAD_LETTER_KEY, json.dumps({"event": event, "why": why}, default=str))
        for _, message in batch:
            message.ack()
        USAGE_EVENTS.labels("recorded").inc(outcome.inserted)
        USAGE_EVENTS.labels("duplicate").inc(outcome.duplicates)
        USAGE_EVENTS.labels("rejected").inc(len(outcome.rejected))
        return outcome.inserted

    def run(
        self, *, should_stop: Callable[[], bool] = lambda: False, until_idle: bool = False
    ) -> int:
        """Consume until ``should_stop()`` (or, with ``until_idle``, until the queue stays
        empty for one flush interval). Returns rows inserted."""
        inserted = 0
        with Connection(self.url) as broker:
            broker.ensure_connection(max_retries=10)
            consumer = broker.Consumer(
                [usage_queue],
                callbacks=[self._on_message],
                accept=["json"],
                prefetch_count=self.batch_size,
            )
            with consumer:
                while not should_stop():
                    try:
                        broker.drain_events(timeout=self.flush_interval)
                    except TimeoutError:
                        if until_idle and not self._buffer:
                            break
                    full = len(self._buffer) >= self.batch_size
                    due = self._buffer and time.monotonic() - self._oldest >= self.flush_interval
                    if full or due:
                        inserted += self.flush()
                inserted += self.flush()
        return inserted
