"""Usage events: one plain JSON message per answered request, for the platform's usage
consumer (``platform/metering/consumer.py``) to append to the ledger.

Plain kombu messages rather than Celery tasks: the consumer batches them into one database
transaction and is not a Celery worker. The event id is the request id, so a re-run of the
same request (a client retry after a timeout) is de-duplicated by the ledger.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from kombu import Exchange
from kombu import Queue as KombuQueue

from workers.contract import (
    CONTRACT_VERSION,
    USAGE_EXCHANGE,
    USAGE_ROUTING_KEY,
    ClassifyRequest,
    ClassifyResult,
    Queue,
    UsageEvent,
)

usage_exchange = Exchange(USAGE_EXCHANGE, type="direct", durable=True)
# Declared by the publisher too: with the Redis transport a message sent to an exchange
# that has no bound queue yet is dropped, and the consumer may not have started.
usage_queue = KombuQueue(
    Queue.USAGE.value, usage_exchange, routing_key=USAGE_ROUTING_KEY, durable=True
)

# Ride out a broker blip of a few seconds; past that the task fails and the client's retry
# (same request id) is the recovery path, so the call is never answered unmetered.
PUBLISH_RETRY_POLICY: dict[str, Any] = {
    "max_retries": 5,
    "interval_start": 0.0,
    "interval_step": 0.5,
    "interval_max": 2.0,
}

_HOSTNAME = socket.gethostname()


def usage_event_build(
    *, request: ClassifyRequest, result: ClassifyResult, occurred_at: datetime | None = None
) -> UsageEvent:
    usage = result["usage"]
    return {
        "v": CONTRACT_VERSION,
        "event_id": request["request_id"],
        "kind": "inference",
        "tenant_id": request["tenant_id"],
        "api_key_id": request["api_key_id"],
        "livemode": request["livemode"],
        "model": request["model"],
        "inputs": usage["inputs"],
        "tokens": usage["tokens"],
        "compute_ms": usage["compute_ms"],
        "cached": usage["cached"],
        "occurred_at": (occurred_at or datetime.now(UTC)).isoformat(),
        "worker": _HOSTNAME,
    }


def usage_publish(*, app: Celery, event: UsageEvent) -> None:
    """Publish ``event`` through the app's producer pool (persistent, retried)."""
    with app.producer_or_acquire() as producer:
        producer.publish(
            dict(event),
            exchange=usage_exchange,
            routing_key=USAGE_ROUTING_KEY,
            serializer="json",
            delivery_mode=2,
            declare=[usage_queue],
            retry=True,
            retry_policy=PUBLISH_RETRY_POLICY,
        )
