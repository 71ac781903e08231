"""Reading usage events back off the real ``usage`` queue, as the platform's consumer would."""

from __future__ import annotations

import os
from typing import Any

from kombu import Connection

from workers.usage import usage_queue


def drain_usage_events() -> list[dict[str, Any]]:
    """Take every message now on the usage queue (acknowledging them)."""
    events: list[dict[str, Any]] = []
    with Connection(os.environ["REDIS_URL"]) as connection, connection.channel() as channel:
        queue = usage_queue(channel)
        queue.declare()
        while (message := queue.get(no_ack=True, accept=["json"])) is not None:
            events.append(message.decode())
    return events
