"""Job events: plain JSON messages on the ``training_events`` queue, read by the platform's
job-events consumer, which records them and moves the job through its states. Like usage
events they are not Celery tasks: the platform side is a consumer, not a worker.

Heartbeats ride the same queue from a background thread, so a job in a long step (a LoRA
epoch, embedding a big file) still proves it is alive; a worker killed with -9 simply stops
sending them, and the platform's sweep notices.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from kombu import Exchange
from kombu import Queue as KombuQueue
from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from workers.contract import (
    CONTRACT_VERSION,
    TRAINING_EVENTS_EXCHANGE,
    TRAINING_EVENTS_ROUTING_KEY,
    JobEvent,
    Queue,
    TrainRequest,
)

# Ride out a broker blip of a few seconds (kombu's retry terms); past that the job's next
# heartbeat or the platform's lease sweep is the recovery path.
PUBLISH_RETRY_POLICY: dict[str, Any] = {
    "max_retries": 5,
    "interval_start": 0.0,
    "interval_step": 0.5,
    "interval_max": 2.0,
}
# What the job is told only as it goes (heartbeats, progress, log lines): one that cannot be
# sent past the retries above is dropped, and training goes on. A Redis restart aborted a
# running job at its next progress event, and cost it one of its two attempts.
BEST_EFFORT = frozenset({"heartbeat", "progress", "log"})
# The events that move the job (started, and its end): tried for about two minutes, since
# the job's outcome rides in them (a success carries the model and its usage).
DECISIVE_RETRY_POLICY: dict[str, Any] = {
    "max_retries": 30,
    "interval_start": 0.0,
    "interval_step": 1.0,
    "interval_max": 5.0,
}

logger = logging.getLogger(__name__)

events_exchange = Exchange(TRAINING_EVENTS_EXCHANGE, type="direct", durable=True)
# Declared by the publisher too: the Redis transport drops messages sent to an exchange that
# has no bound queue yet.
events_queue = KombuQueue(
    Queue.TRAINING_EVENTS.value,
    events_exchange,
    routing_key=TRAINING_EVENTS_ROUTING_KEY,
    durable=True,
)

_HOSTNAME = socket.gethostname()


class EventPublisher:
    """Publishes one attempt's events with increasing ``seq`` (heartbeats use seq 0: they
    are not stored, only noted). Thread-safe."""

    def __init__(self, app: Celery, request: TrainRequest) -> None:
        self.app = app
        self.job_id = request["job_id"]
        self.attempt = request["attempt"]
        self._seq = 0
        self._lock = threading.Lock()

    def emit(
        self,
        type: Any,
        message: str,
        *,
        level: Any = "info",
        data: dict[str, Any] | None = None,
    ) -> None:
        with self._lock:
            if type != "heartbeat":
                self._seq += 1
            event: JobEvent = {
                "v": CONTRACT_VERSION,
                "job_id": self.job_id,
                "attempt": self.attempt,
                "seq": 0 if type == "heartbeat" else self._seq,
                "type": type,
                "level": level,
                "message": message,
                "data": dict(data or {}),
                "occurred_at": datetime.now(UTC).isoformat(),
                "worker": _HOSTNAME,
            }
            best_effort = type in BEST_EFFORT
            try:
                with self.app.producer_or_acquire() as producer:
                    producer.publish(
                        dict(event),
                        exchange=events_exchange,
                        routing_key=TRAINING_EVENTS_ROUTING_KEY,
                        serializer="json",
                        delivery_mode=2,
                        declare=[events_queue],
                        retry=True,
                        retry_policy=(
                            PUBLISH_RETRY_POLICY if best_effort else DECISIVE_RETRY_POLICY
                        ),
                    )
            except (KombuError, RedisError, OSError):
                if not best_effort:
                    raise
                logger.warning(
                    "%s event of %s not sent: the broker cannot be reached", type, self.job_id
                )


class Heartbeat:
    """Sends a heartbeat every ``interval`` seconds until stopped, with what ``data`` says
    then (the attempt's compute so far: the platform records it if the attempt is lost)."""

    def __init__(
        self,
        publisher: EventPublisher,
        interval: float,
        data: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.publisher = publisher
        self.interval = interval
        self.data = data
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.publisher.emit("heartbeat", "", data=self.data() if self.data else None)
            except Exception:  # a missed beat is survivable; a dead thread is not
                logger.exception("heartbeat for %s not sent", self.publisher.job_id)
