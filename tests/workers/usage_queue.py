"""Reading usage events back off the real usage stream, as the platform's consumer would."""

from __future__ import annotations

import json
import os
from typing import Any

import redis

from workers.contract import USAGE_STREAM


def drain_usage_events() -> list[dict[str, Any]]:
    """Take every event now on the usage stream (removing them)."""
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    entries = client.xrange(USAGE_STREAM)
    if entries:
        client.xdel(USAGE_STREAM, *[entry_id for entry_id, _ in entries])
    return [json.loads(fields[b"event"]) for _, fields in entries]
