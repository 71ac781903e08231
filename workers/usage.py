"""Usage events: one JSON document per answered request, for the platform's usage consumer
(``platform/metering/consumer.py``) to append to the ledger.

They go to a Redis stream (``contract.USAGE_STREAM``), written in the same transaction as
the answer (``workers/replies.py``), so no answered call goes unmetered and no unanswered
one is metered. The event id is the request id, so a re-run of the same request is
de-duplicated by the ledger. A fine-tune's event (the job id its event id) rides in the
job's ``succeeded`` event instead (``workers/training/tasks.py``): the platform records it
when it marks the job succeeded, so a job cancelled first is never billed.
"""

from __future__ import annotations

import json
import socket
import time
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import redis

from workers.contract import (
    CONTRACT_VERSION,
    USAGE_STREAM,
    ClassifyRequest,
    ClassifyResult,
    UsageEvent,
    request_dated,
)
from workers.replies import redis_client
from workers.settings import get_settings

# Ride out a broker blip of a few seconds; past that the caller fails and its retry (same
# id) is the recovery path.
PUBLISH_ATTEMPTS = 6
PUBLISH_BACKOFF_S = 0.5

_HOSTNAME = socket.gethostname()


def usage_event_build(
    *, request: ClassifyRequest, result: ClassifyResult, occurred_at: datetime | None = None
) -> UsageEvent:
    usage = result["usage"]
    event: UsageEvent = {
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
        "occurred_at": (occurred_at or request_dated(request)).isoformat(),
        "worker": _HOSTNAME,
        "cost_micros": cost_micros(usage["compute_ms"]),
        "cost_currency": get_settings().currency,
        "pool": get_settings().pool,
    }
    if "plan_id" in request:
        event["plan_id"] = request["plan_id"]
    return event


MS_PER_HOUR = Decimal(3_600_000)
MICROS = Decimal(1_000_000)


def cost_micros(compute_ms: float) -> str:
    """What ``compute_ms`` of this pool's hardware costs, in micro-units of its currency.

    The batch's wall time was already split across its requests by token share, so these
    shares add up to the time the hardware was busy."""
    price = Decimal(get_settings().price_per_hour)
    cost = Decimal(str(compute_ms)) * price * MICROS / MS_PER_HOUR
    return str(cost.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP))


def usage_stage(pipe: Any, event: UsageEvent) -> None:
    """Add the event to a pipeline (or transaction) the caller executes."""
    pipe.xadd(USAGE_STREAM, {"event": usage_event_json(event)})


def usage_event_json(event: UsageEvent) -> str:
    """The event as the usage stream holds it, costed if the producer did not cost it."""
    if "cost_micros" not in event:
        event = {**event, "cost_micros": cost_micros(event["compute_ms"]),
                 "cost_currency": get_settings().currency, "pool": get_settings().pool}  # fmt: skip
    return json.dumps(event, separators=(",", ":"))


def usage_publish(*, event: UsageEvent, app: Any = None) -> None:
    """Append one event on its own (classifications use ``reply_send``; fine-tunes, once
    published this way, now ride in their ``succeeded`` event).
    ``app`` is accepted for callers written against the earlier kombu transport."""
    for attempt in range(PUBLISH_ATTEMPTS):
        try:
            pipe = redis_client().pipeline(transaction=False)
            usage_stage(pipe, event)
            pipe.execute()
            return
        except redis.ConnectionError:
            if attempt == PUBLISH_ATTEMPTS - 1:
                raise
            time.sleep(PUBLISH_BACKOFF_S * (attempt + 1))
