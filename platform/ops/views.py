"""Probes and metrics for operators and orchestrators (no API key: they carry no data)."""

from __future__ import annotations

import functools
import hmac
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

import redis
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily

import metering.metrics  # noqa: F401  # every series is declared, whichever process counts it
import ops.metrics  # noqa: F401
from core.errors import error_body
from ops.workers import fleet_cost, live_counts, queue_depths, workers_seen
from workers.contract import Queue

logger = logging.getLogger(__name__)
T = TypeVar("T")
# What a probe or the scrape waits for Redis, each check or read.
PROBE_TIMEOUT_S = 1.0


def healthz(request: HttpRequest) -> JsonResponse:
    """The process is alive and serving; says nothing about its dependencies."""
    return JsonResponse({"status": "ok"})


def _check(fn: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        fn()
    except Exception as exc:
        return {"ok": False, "error": exc.__class__.__name__}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 2)}


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _cache() -> None:
    cache.set("readyz", "1", 5)
    if cache.get("readyz") != "1":
        raise RuntimeError("cache read back nothing")


@functools.cache
def probe_client() -> redis.Redis:
    """Redis for the probes and the scrape: a stalled Redis (connections taken, never
    answered) costs them ``PROBE_TIMEOUT_S``, not the API's own timeouts. NOTE: with those,
    /readyz took 15 s (past its probe's 10 s) and /metrics 10 s (Prometheus's default scrape
    timeout: every API series gone while Redis was down; an operator's audit)."""
    return redis.Redis.from_url(
        settings.REDIS_URL, socket_timeout=PROBE_TIMEOUT_S, socket_connect_timeout=PROBE_TIMEOUT_S
    )


def _broker() -> None:
    probe_client().llen(Queue.INFERENCE.value)


# The cache check runs here, with a deadline (django-redis's own socket timeout is 5 s).
_PROBES = ThreadPoolExecutor(max_workers=1, thread_name_prefix="readyz-cache")


def readyz(request: HttpRequest) -> JsonResponse:
    """Ready to take traffic: database, broker and cache all answer, within a few seconds
    whatever stalls."""
    cache_check = _PROBES.submit(_check, _cache)
    checks = {"database": _check(_database), "broker": _check(_broker)}
    try:
        checks["cache"] = cache_check.result(timeout=PROBE_TIMEOUT_S)
    except FutureTimeout:
        checks["cache"] = {"ok": False, "error": "TimeoutError"}
    ready = all(check["ok"] for check in checks.values())
    return JsonResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503
    )


def _read(read: Callable[[], T]) -> T | None:
    """``read()``, or None when Redis cannot answer it: no sample rather than a failed
    scrape (``/readyz`` says that Redis is down)."""
    try:
        return read()
    except Exception:
        logger.debug("a data-plane gauge is unreadable", exc_info=True)
        return None


class _DataPlane:
    """Read from Redis at scrape time: classifications waiting for a worker (what an
    autoscaler scales inference workers on), the other queues and dead letters, and the
    live workers and their hardware price per hour (``ops.workers``). An unreadable worker
    report never drops the queues' samples; a Redis that does not answer the first read is
    not asked the second."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depths = _read(lambda: queue_depths(probe_client()))  # one round trip for every queue
        if depths is None:
            return  # (Redis did not answer: the workers' reports would wait as long again)
        yield GaugeMetricFamily(
            "inference_queue_messages", "Messages waiting on the inference queue.",
            depths["inference"],
        )  # fmt: skip
        queues = GaugeMetricFamily(
            "queue_entries", "Entries waiting in each queue and dead-letter list.",
            labels=["queue"],
        )  # fmt: skip
        for name, value in depths.items():
            queues.add_metric([name], value)
        yield queues
        rows = _read(lambda: workers_seen(probe_client()))
        if rows is None:
            return
        live = GaugeMetricFamily(
            "workers_live", "Workers heard from lately, by kind and pool.", labels=["kind", "pool"]
        )
        for (kind, pool), count in live_counts(rows).items():
            live.add_metric([kind, pool], count)
        yield live
        price = GaugeMetricFamily(
            "workers_price_per_hour",
            "What the live workers' hardware costs per hour, by kind, pool and currency.",
            labels=["kind", "pool", "currency"],
        )
        for row in fleet_cost(rows):
            price.add_metric([row.kind, row.pool, row.currency], float(row.per_hour))
        yield price


def _scrape_allowed(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    if not token:
        return True
    scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


def metrics(request: HttpRequest) -> HttpResponse:
    if not _scrape_allowed(request):
        message = "This server's /metrics needs its token: Authorization: Bearer <METRICS_TOKEN>."
        challenge = {"WWW-Authenticate": 'Bearer realm="metrics"'}
        refused = error_body(401, "invalid_metrics_token", message)
        return JsonResponse(refused, status=401, headers=challenge)
    registry: CollectorRegistry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Several API processes: add up what each wrote to the shared directory.
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    body = generate_latest(registry)
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(_DataPlane())
    return HttpResponse(body + generate_latest(scrape), content_type=CONTENT_TYPE_LATEST)
