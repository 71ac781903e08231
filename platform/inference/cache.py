"""The result cache: a request whose every input was answered before, by the same model
version with the same labels and examples, is answered from Redis without a worker.

Workers store each answered row (``workers/replies.py``); the API looks all of a request's
rows up in one MGET. A full hit is metered like the call it replaces (its inputs and
tokens, ``cached`` = inputs; the plan decides whether cached inputs are billed) at the cost
of a lookup, which is no compute: cost 0 on pool ``cache``. A partial hit sends only the
missed inputs to a worker, with the found rows (``cached_rows``): the worker answers and
meters the whole call, the found rows as cached at no compute. Keys include the model
version (a fine-tuned model's artifact hash), so a changed model never serves stale
answers."""

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
    CachedRow,
    ClassificationRow,
    ClassifyRequest,
    ClassifyResult,
    UsageEvent,
    cached_row_split,
    result_cache_key,
)

from .catalog import BASE_MODEL_VERSIONS
from .dispatch import redis_client
from .models import AIModel

_HOST = socket.gethostname()
# Per model: requests answered from the cache alone (hit), partly (partial), or not (miss).
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


def cache_lookup(request: ClassifyRequest) -> list[CachedRow | None] | None:
    """Each input's cached row (None where it missed), or None when the model's answers are
    not cached. Counts the lookup as a hit, a partial hit or a miss."""
    version = request.get("cache_version")
    if not version:
        return None
    keys = [
        result_cache_key(version, request["labels"], request["examples"], text)
        for text in request["inputs"]
    ]
    found: list[CachedRow | None] = [
        None if raw is None else cast(CachedRow, {**json.loads(raw), "index": index})
        for index, raw in enumerate(cast(list[Any], redis_client().mget(keys)))
    ]
    hits = sum(row is not None for row in found)
    outcome = "hit" if hits == len(found) else "partial" if hits else "miss"
    CACHE_LOOKUPS.labels(request["model"], outcome).inc()
    return found


def with_cached_rows(request: ClassifyRequest, found: list[CachedRow | None]) -> ClassifyRequest:
    """The request a worker gets for a partial hit: the missed inputs, and the found rows."""
    return {
        **request,
        "inputs": [text for text, row in zip(request["inputs"], found, strict=True) if not row],
        "cached_rows": [row for row in found if row is not None],
    }


def cached_answer(request: ClassifyRequest, found: list[CachedRow]) -> ClassifyResult:
    """The whole answer from the cache (every input hit), metered."""
    rows: list[ClassificationRow] = []
    tokens = 0
    for entry in found:
        row, row_tokens = cached_row_split(entry)
        rows.append(row)
        tokens += row_tokens
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
