"""The result cache: a request whose every input was answered before, by the same model
version with the same labels and examples, is answered from Redis without a worker.

Workers store each answered row (``workers/replies.py``); the API looks all of a request's
rows up in one MGET. A full hit is metered like the call it replaces (its inputs and
tokens, ``cached`` = inputs; the plan decides whether cached inputs are billed) at the cost
of a lookup, which is no compute: cost 0 on pool ``cache``. Keys include the model version
(a fine-tuned model's artifact hash), so a changed model never serves stale answers."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime
from typing import Any, cast

from django.conf import settings
from prometheus_client import Counter

from workers.contract import (
    CONTRACT_VERSION,
    USAGE_STREAM,
    ClassificationRow,
    ClassifyRequest,
    ClassifyResult,
    UsageEvent,
    result_cache_key,
)

from .catalog import BASE_MODEL_VERSIONS
from .dispatch import redis_client
from .models import AIModel

_HOST = socket.gethostname()
# Hit rate = hit / (hit + miss), per model.
CACHE_LOOKUPS = Counter(
    "result_cache_lookups_total", "Requests looked up in the result cache.", ["model", "outcome"]
)


def cache_version(model: AIModel) -> str | None:
    """What identifies the model's answers: its weights, not just its name."""
    if settings.RESULT_CACHE_TTL_S <= 0:
        return None
    if model.kind == AIModel.Kind.BASE:
        return BASE_MODEL_VERSIONS.get(model.id)
    return f"{model.id}@{model.artifact}" if model.artifact else None


def cached_result(request: ClassifyRequest) -> ClassifyResult | None:
    """The whole answer from the cache, metered, or None (any miss: the worker answers)."""
    version = request.get("cache_version")
    if not version:
        return None
    keys = [
        result_cache_key(version, request["labels"], request["examples"], text)
        for text in request["inputs"]
    ]
    found = cast(list[Any], redis_client().mget(keys))
    if any(value is None for value in found):
        CACHE_LOOKUPS.labels(request["model"], "miss").inc()
        return None
    CACHE_LOOKUPS.labels(request["model"], "hit").inc()
    rows: list[ClassificationRow] = []
    tokens = 0
    for index, raw in enumerate(found):
        row = json.loads(raw)
        tokens += int(row.pop("tokens", 0))
        rows.append(cast(ClassificationRow, {**row, "index": index}))
    n = len(rows)
    event: UsageEvent = {
        "v": CONTRACT_VERSION, "event_id": request["request_id"], "kind": "inference",
        "tenant_id": request["tenant_id"], "api_key_id": request["api_key_id"],
        "livemode": request["livemode"], "model": request["model"], "inputs": n,
        "tokens": tokens, "compute_ms": 0.0, "cached": n,
        "occurred_at": datetime.now(UTC).isoformat(), "worker": _HOST,
        "cost_micros": "0", "pool": "cache",
    }  # fmt: skip
    redis_client().xadd(USAGE_STREAM, {"event": json.dumps(event, separators=(",", ":"))})
    return {
        "v": CONTRACT_VERSION, "request_id": request["request_id"], "model": request["model"],
        "results": rows, "usage": {"inputs": n, "tokens": tokens, "compute_ms": 0.0, "cached": n},
    }  # fmt: skip
