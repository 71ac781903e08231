"""The result cache: a request whose every input was answered before, by the same model
version with the same labels and examples, is answered from Redis without a worker.

Workers store each answered row (``workers/replies.py``); the API looks all of a request's
rows up in one MGET, which rides in the request's admission round trip (``prefetch_keys``)
for a base model, and for a fine-tuned one this process has classified with before. A full
hit is metered like the call it replaces (its inputs and tokens, ``cached`` = inputs; the
plan decides whether cached inputs are billed) at the cost of a lookup, which is no
compute: cost 0 on pool ``cache``; its usage event is added by the admission script where
the view can rule out every refusal after admission (``limits.hits``), else it leaves in
one round trip with the request's settlement. A partial hit sends only the missed inputs
to a worker, with the found rows (``cached_rows``): the worker answers and meters the whole
call, the found rows as cached at no compute. Keys include the model version (a fine-tuned
model's artifact hash), so a changed model never serves stale answers, and the tenant: one
tenant's answers never serve another's, so neither ``cached`` nor a hit's speed tells a
tenant what others have sent."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

import redis
from django.conf import settings
from prometheus_client import Counter

from limits.services import Admission, settle_commands
from workers.contract import (
    CONTRACT_VERSION,
    USAGE_STREAM,
    CachedRow,
    ClassificationRow,
    ClassifyRequest,
    ClassifyResult,
    UsageEvent,
    cached_row_split,
    request_dated,
    result_cache_keys,
)

from . import messages
from .catalog import BASE_MODEL_VERSIONS
from .dispatch import give_up_client, hard_stop_of, overloaded, pause_or_stop, redis_client
from .models import AIModel
from .selectors import base_model_cached

logger = logging.getLogger(__name__)

_HOST = socket.gethostname()
# Per base model (a tenant's fine-tuned models together, as "fine_tuned": /metrics is
# unauthenticated and their ids name tenants' projects): requests answered from the cache
# alone (hit), partly (partial), or not (miss), or not looked up because Redis failed (error).
CACHE_LOOKUPS = Counter(
    "result_cache_lookups_total", "Requests looked up in the result cache.", ["model", "outcome"]
)


def _metric_model(model_id: str) -> str:
    return "fine_tuned" if model_id.startswith("ft:") else model_id


def cache_version(model: AIModel, tenant_id: str, livemode: bool) -> str | None:
    """What identifies the answers a tenant may be served: the model's weights (not just
    its name), the tenant and the key's mode. NOTE: a base model's cache is not shared
    between tenants, although it could save their identical inputs a forward pass: a shared
    hit would tell one tenant that another had sent that very text; nor between live and
    test mode (a test key would learn what production classified, and test-mode calls,
    never billed, would fill the live cache)."""
    if settings.RESULT_CACHE_TTL_S <= 0:
        return None
    if model.kind == AIModel.Kind.BASE:
        weights = BASE_MODEL_VERSIONS.get(model.id)
    else:
        weights = f"{model.id}@{model.artifact}" if model.artifact else None
    if not weights:
        return None
    return f"{weights}~{tenant_id}" if livemode else f"{weights}~{tenant_id}~test"


# Fine-tuned models' cache versions as this process's classifications last resolved them
# (most recently used last), so that admission can prefetch their rows without a query.
_SEEN_VERSIONS: OrderedDict[str, str] = OrderedDict()
SEEN_VERSIONS_MAX = 4096
# Past this many characters of non-ASCII input, admission reads no cache rows (see
# prefetch_keys): the tokenizer's normaliser takes ~0.4-1.2 us a character of it (CJK, which
# it spaces out, the costliest: 11.7 ms for 10,000), so 8,192 of them cost ~10 ms at most.
PREFETCH_MAX_CHARS = 8192
_seen_lock = threading.Lock()


def _remember_version(model_id: str, version: str) -> None:
    if not model_id.startswith("ft:"):
        return
    with _seen_lock:
        _SEEN_VERSIONS[model_id] = version
        _SEEN_VERSIONS.move_to_end(model_id)
        if len(_SEEN_VERSIONS) > SEEN_VERSIONS_MAX:
            _SEEN_VERSIONS.popitem(last=False)


def prefetch_keys(
    *, tenant_id: str, livemode: bool, model_id: str, inputs: list[str], labels: list[str] | None
) -> list[str]:
    """The cache keys ``cache_lookup`` will read for a plainly valid request (no examples),
    so that admission reads them in its own round trip; [] when they cannot be known here.

    NOTE: no database work, so a request that admission refuses costs none for having
    asked: a base model resolves from this process's memory, and a fine-tuned model's
    version is the one this process's last classification with it resolved. That is a
    guess (the model may have been retrained or deleted since): ``cache_lookup`` uses
    prefetched values only under the keys it computes from the model it resolves itself."""
    if model_id.startswith("ft:"):
        if labels:  # a fine-tuned model takes none: the request will be refused
            return []
        with _seen_lock:
            version = _SEEN_VERSIONS.get(model_id)
    else:
        model = base_model_cached(model_id)
        if model is None or model.status != AIModel.Status.READY:
            return []
        version = cache_version(model, tenant_id, livemode)
    if not version:
        return []
    if sum(map(len, inputs)) > PREFETCH_MAX_CHARS and not all(map(str.isascii, inputs)):
        # Normalising them costs up to ~1.2 µs a character (text_as_read): not before
        # admission, which may refuse the request; cache_lookup reads them after.
        return []
    return result_cache_keys(version, labels or None, None, inputs)


def cache_lookup(
    request: ClassifyRequest, prefetched: Mapping[str, bytes | None] | None = None
) -> list[CachedRow | None] | None:
    """Each input's cached row (None where it missed), or None when the model's answers are
    not cached; from ``prefetched`` (values read with the request's admission) when it holds
    every key, else one MGET. Counts the lookup as a hit, a partial hit or a miss.

    NOTE: a Redis that cannot be read is a miss for every input (counted as an error), not
    a failure: the request goes on to a worker, and dispatch answers the 503 for a broker
    that is down. Admission fails open without Redis, so nothing is prefetched then."""
    version = request.get("cache_version")
    if not version:
        return None
    _remember_version(request["model"], version)
    keys = result_cache_keys(version, request["labels"], request["examples"], request["inputs"])
    if prefetched is not None and all(key in prefetched for key in keys):
        raws: list[Any] = [prefetched[key] for key in keys]
    else:
        try:
            raws = cast(list[Any], redis_client().mget(keys))
        except (redis.RedisError, ConnectionError) as exc:
            logger.warning("result cache unreadable, looked up as a miss: %r", exc)
            CACHE_LOOKUPS.labels(_metric_model(request["model"]), "error").inc()
            return [None] * len(keys)
    found: list[CachedRow | None] = [
        None if raw is None else cast(CachedRow, {**json.loads(raw), "index": index})
        for index, raw in enumerate(raws)
    ]
    hits = sum(row is not None for row in found)
    outcome = "hit" if hits == len(found) else "partial" if hits else "miss"
    CACHE_LOOKUPS.labels(_metric_model(request["model"]), outcome).inc()
    return found


def with_cached_rows(request: ClassifyRequest, found: list[CachedRow | None]) -> ClassifyRequest:
    """The request a worker gets for a partial hit: the missed inputs, and the found rows."""
    return {
        **request,
        "inputs": [text for text, row in zip(request["inputs"], found, strict=True) if not row],
        "cached_rows": [row for row in found if row is not None],
    }


def _metered(
    client: redis.Redis, fields: dict[str, str], admission: Admission | None, deadline: float
) -> list[Any]:
    """The usage event and the settlement, in one round trip: their results; the 503
    ``broker_unavailable`` where Redis could not be reached until the request's hard stop.

    NOTE: a round trip that failed whole (a timeout: Redis stalled) may have been sent, and
    Redis runs it once it resumes: the call is then billed, and answering 503 at once billed
    a 503. It is tried again, on a fresh connection, until it goes through or the hard stop
    the worker path keeps too (``dispatch.hard_stop_of``); a second event under the same id
    is one ledger row (the consumer's unique event id), a second settlement nothing."""
    while True:
        pipe = client.pipeline(transaction=False)
        pipe.xadd(USAGE_STREAM, fields)  # type: ignore[arg-type]
        if admission is not None:
            settle_commands(pipe, admission, succeeded=True)
        try:
            results: list[Any] = pipe.execute(raise_on_error=False)
            return results
        except (redis.RedisError, ConnectionError):
            # (The admission is not marked settled: the view settles it as failed.)
            pause_or_stop(hard_stop_of(deadline))
            logger.warning("usage of a cached answer not confirmed by Redis: trying again")
            client = give_up_client()  # (a short socket timeout: each try ends soon)


def hit_event(
    request: Mapping[str, Any], *, inputs: int, tokens: int, occurred_at: datetime
) -> UsageEvent:
    """The usage event of a call answered from the cache alone: metered like the call it
    replaces (``cached`` = inputs), at the cost of a lookup (none, on pool ``cache``).
    ``request``: the call's ids, mode, model and plan, as a worker's request names them."""
    event: UsageEvent = {
        "v": CONTRACT_VERSION, "event_id": request["request_id"], "kind": "inference",
        "tenant_id": request["tenant_id"], "api_key_id": request["api_key_id"],
        "livemode": request["livemode"], "model": request["model"], "inputs": inputs,
        "tokens": tokens, "compute_ms": 0.0, "cached": inputs,
        "occurred_at": occurred_at.isoformat(), "worker": _HOST,
        "cost_micros": "0", "pool": "cache",
    }  # fmt: skip
    if "plan_id" in request:
        event["plan_id"] = request["plan_id"]
    return event


def hit_event_parts(
    request: Mapping[str, Any], inputs: int, plan_id: str, admitted_at: float
) -> tuple[str, str]:
    """``hit_event`` for a call that admission meters (``limits.hits``), as the JSON before
    and after its tokens, which the admission script sums from the cached rows."""
    at = datetime.fromtimestamp(admitted_at, UTC)
    event = hit_event({**request, "plan_id": plan_id}, inputs=inputs, tokens=0, occurred_at=at)
    text = _event_json(event)
    head, tail = text.split(_TOKENS_AT, 1)  # (no string in it holds an unescaped quote)
    return head + '"tokens":', tail


_TOKENS_AT = '"tokens":0'


_COMPACT = json.JSONEncoder(separators=(",", ":"))


def _event_json(event: UsageEvent) -> str:
    return _COMPACT.encode(event)


def cached_answer(
    request: ClassifyRequest, found: list[CachedRow], admission: Admission | None = None
) -> ClassifyResult:
    """The whole answer from the cache (every input hit), metered: its usage event, and the
    request's ``admission`` settled as answered, in one round trip (none where admission
    metered it already: ``Admission.metered``). A 503 if Redis cannot take the event (an
    answer is never given unmetered)."""
    rows: list[ClassificationRow] = []
    tokens = 0
    for entry in found:
        row, row_tokens = cached_row_split(entry)
        rows.append(row)
        tokens += row_tokens
    n = len(rows)
    if admission is None or not admission.metered:
        event = hit_event(request, inputs=n, tokens=tokens, occurred_at=request_dated(request))
        fields = {"event": _event_json(event)}
        results = _metered(redis_client(), fields, admission, request["deadline"])
        if any(isinstance(result, Exception) for result in results):
            # The admission is not marked settled: the view settles it as failed. Where the
            # event failed but the settlement ran, its hold is gone: the refund goes without.
            if admission is not None and results[-1:] and not isinstance(results[-1], Exception):
                admission.held = ""
            raise overloaded(messages.BROKER_DOWN, "broker_unavailable")
        if admission is not None:
            admission.settled = True
    return {
        "v": CONTRACT_VERSION, "request_id": request["request_id"], "model": request["model"],
        "results": rows, "usage": {"inputs": n, "tokens": tokens, "compute_ms": 0.0, "cached": n},
    }  # fmt: skip
