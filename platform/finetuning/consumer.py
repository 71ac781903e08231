"""The platform-side job-events consumer: applies workers' training events to job rows, and
runs the lease sweep that retries (once) or fails jobs whose worker went silent.

At-least-once: a message is acknowledged only after the transaction that applied it
commits; a re-delivered event is a no-op (events are unique per job, attempt and seq).
Events that can never be applied go to the Redis list ``training_events:dead``.
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

from workers.contract import TRAINING_EVENTS_EXCHANGE, TRAINING_EVENTS_ROUTING_KEY, Queue

from .events import fine_tune_event_apply, fine_tune_sweep

logger = logging.getLogger(__name__)

DEAD_LETTER_KEY = "training_events:dead"
events_exchange = Exchange(TRAINING_EVENTS_EXCHANGE, type="direct", durable=True)
events_queue = KombuQueue(
    Queue.TRAINING_EVENTS.value,
    events_exchange,
    routing_key=TRAINING_EVENTS_ROUTING_KEY,
    durable=True,
)


class JobEventConsumer:
    def __init__(
        self,
        *,
        url: str | None = None,
        sweep_interval_s: float | None = None,
        heartbeat_timeout_s: float | None = None,
    ) -> None:
        self.url = url or settings.REDIS_URL
        self.sweep_interval_s = sweep_interval_s or settings.FINETUNE_SWEEP_INTERVAL_S
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._dead = redis.Redis.from_url(self.url)
        self._last_sweep = 0.0

    def _on_message(self, body: Any, message: Any) -> None:
        if not connection.in_atomic_block:
            close_old_connections()  # a long-lived process must drop closed connections
        try:
            fine_tune_event_apply(event=body)
        except DatabaseError:
            logger.exception("job event not applied; re-queued")
            message.requeue()
            time.sleep(1.0)
            return
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            logger.error("job event rejected (%r): %r", exc, body)
            self._dead.rpush(DEAD_LETTER_KEY, json.dumps({"event": body, "why": repr(exc)}))
        message.ack()

    def sweep(self) -> int:
        self._last_sweep = time.monotonic()
        try:
            return fine_tune_sweep(timeout_s=self.heartbeat_timeout_s)
        except DatabaseError:
            logger.exception("fine-tune sweep failed; will retry")
            return 0

    def run(
        self, *, should_stop: Callable[[], bool] = lambda: False, until_idle: bool = False
    ) -> None:
        """Consume until ``should_stop()`` (or, with ``until_idle``, until no event arrives
        for one poll), sweeping every ``sweep_interval_s``."""
        with Connection(self.url) as broker:
            broker.ensure_connection(max_retries=10)
            consumer = broker.Consumer(
                [events_queue], callbacks=[self._on_message], accept=["json"], prefetch_count=50
            )
            with consumer:
                while not should_stop():
                    idle = False
                    try:
                        broker.drain_events(timeout=0.2)
                    except TimeoutError:
                        idle = True
                    since = time.monotonic() - self._last_sweep
                    # NOTE: sweep when caught up: heartbeats still waiting in the queue must
                    # count before a job is judged dead (but never starve the sweep).
                    if since >= self.sweep_interval_s and (
                        idle or since >= 10 * self.sweep_interval_s
                    ):
                        self.sweep()
                    if idle and until_idle:
                        break
