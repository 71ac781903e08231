"""The platform-side job-events consumer: applies workers' training events to job rows, and
runs the lease sweep that retries (once) or fails jobs whose worker went silent, and the
dispatch sweep that sends waiting jobs whose tenant has a slot free (``dispatch.py``).

At-least-once: a message is acknowledged only after the transaction that applied it
commits; a re-delivered event is a no-op (events are unique per job, attempt and seq).
Events that can never be applied go to the Redis list ``training_events:dead``.

Redis going away (restarting, stalled) does not end the consumer: it logs a warning, waits
(the usage consumer's ``Backoff``) and connects again; a message it had taken and not
acknowledged goes back to the queue when kombu restores it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from django.conf import settings
from django.db import DatabaseError, DataError, IntegrityError, close_old_connections, connection
from kombu import Connection, Exchange
from kombu import Queue as KombuQueue
from kombu.exceptions import ConnectionError as BrokerConnectionError
from kombu.exceptions import OperationalError

from core.backoff import Backoff
from workers import liveness
from workers.contract import TRAINING_EVENTS_EXCHANGE, TRAINING_EVENTS_ROUTING_KEY, Queue

from .dispatch import fine_tunes_dispatch_sweep
from .events import fine_tune_event_apply, fine_tune_event_refused, fine_tune_sweep

logger = logging.getLogger(__name__)

DEAD_LETTER_KEY = "training_events:dead"
events_exchange = Exchange(TRAINING_EVENTS_EXCHANGE, type="direct", durable=True)
events_queue = KombuQueue(
    Queue.TRAINING_EVENTS.value,
    events_exchange,
    routing_key=TRAINING_EVENTS_ROUTING_KEY,
    durable=True,
)
# What Redis going away raises through kombu: redis-py's errors, socket errors, and kombu's
# (a connection it could not make, a queue's binding Redis lost).
REDIS_ERRORS = (redis.RedisError, OSError, OperationalError, BrokerConnectionError)


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
        self._deaf_until = 0.0
        self._backoff = Backoff()
        self._failing_since: float | None = None

    def _on_message(self, body: Any, message: Any) -> None:
        if not connection.in_atomic_block:
            close_old_connections()  # a long-lived process must drop closed connections
        try:
            fine_tune_event_apply(event=body)
        except (IntegrityError, DataError) as exc:
            # NOTE: this event can never be stored (a value the database refuses): re-queued,
            # it would come back first forever and hold up every tenant's events behind it.
            self._refuse(body, exc, "refused by the database")
        except DatabaseError:
            logger.exception("job event not applied; re-queued")
            message.requeue()
            time.sleep(1.0)
            return
        except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError) as exc:
            self._refuse(body, exc, "rejected")
        message.ack()

    def _refuse(self, body: Any, exc: Exception, why: str) -> None:
        """A dead letter for an operator; a job whose last word it was fails now."""
        logger.error("job event %s (%r): %r", why, exc, body)
        self._dead.rpush(DEAD_LETTER_KEY, json.dumps({"event": body, "why": repr(exc)}))
        if isinstance(body, dict):
            try:
                fine_tune_event_refused(event=body)
            except DatabaseError:
                logger.exception("the job of a refused event could not be failed")

    def sweep(self) -> int:
        self._last_sweep = time.monotonic()
        try:
            handled = fine_tune_sweep(timeout_s=self.heartbeat_timeout_s)
            # The dispatch's safety net too: waiting jobs whose tenant has a slot free.
            return handled + fine_tunes_dispatch_sweep()
        except DatabaseError:
            logger.exception("fine-tune sweep failed; will retry")
            return 0

    def _consume(self, should_stop: Callable[[], bool], *, until_idle: bool) -> None:
        with Connection(self.url) as broker:
            broker.connect()
            consumer = broker.Consumer(
                [events_queue], callbacks=[self._on_message], accept=["json"], prefetch_count=50
            )
            with consumer:
                if self._failing_since is not None:
                    logger.info("training events consumer: Redis is back after %.1f s",
                                time.monotonic() - self._failing_since)  # fmt: skip
                    self._failing_since = None
                    self._backoff.reset()
                while not should_stop():
                    # Each turn waits 0.2 s at most for events, so an idle consumer beats
                    # too; a turn stuck (applying an event behind a lock, a dead connection)
                    # stops the beats, and its liveness probe restarts it (workers/liveness.py).
                    liveness.beat()
                    idle = False
                    try:
                        broker.drain_events(timeout=0.2)
                    except TimeoutError:
                        idle = True
                    since = time.monotonic() - self._last_sweep
                    # NOTE: sweep when caught up: heartbeats still waiting in the queue must
                    # count before a job is judged dead (but never starve the sweep).
                    if (
                        since >= self.sweep_interval_s
                        and (idle or since >= 10 * self.sweep_interval_s)
                        and time.monotonic() >= self._deaf_until
                    ):
                        self.sweep()
                    # NOTE: idle for one poll is not enough: a poll can time out before it
                    # has fetched what is waiting (a loaded machine; a test's last word
                    # was left unread this way). Only an empty queue is idle.
                    if idle and until_idle and not _waiting(broker):
                        break

    def run(
        self, *, should_stop: Callable[[], bool] = lambda: False, until_idle: bool = False
    ) -> None:
        """Consume until ``should_stop()`` (or, with ``until_idle``, until no event arrives
        for one poll), sweeping every ``sweep_interval_s``."""
        while not should_stop():
            liveness.beat()  # (waiting out a Redis outage is being alive, as the usage consumer)
            try:
                self._consume(should_stop, until_idle=until_idle)
                return
            except REDIS_ERRORS as exc:
                self._failing_since = self._failing_since or time.monotonic()
                delay = self._backoff.delay()
                logger.warning("training events consumer: Redis error (%s: %s); retrying in %.1f s",
                               type(exc).__name__, exc, delay)  # fmt: skip
                # WARNING: no heartbeat could reach us while Redis was away: a job is judged
                # silent only after a full heartbeat timeout in which we could hear it.
                timeout = self.heartbeat_timeout_s or settings.FINETUNE_HEARTBEAT_TIMEOUT_S
                self._deaf_until = time.monotonic() + delay + timeout
                self._backoff.wait(delay, should_stop)


def _waiting(broker: Connection) -> int:
    """Messages still in the events queue (not yet fetched by this consumer)."""
    # (declared as the consumer declares it: a passive declare fails where the binding is
    # gone, a Redis that lost its data)
    declared: Any = events_queue(broker.default_channel).queue_declare()
    return int(declared.message_count)
