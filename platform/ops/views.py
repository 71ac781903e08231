"""Probes and metrics for operators and orchestrators (no API key: they carry no data)."""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

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
from inference.dispatch import queue_depth
from ops.workers import fleet_cost, live_counts, queue_depths, workers_seen

logger = logging.getLogger(__name__)
T = TypeVar("T")


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


def readyz(request: HttpRequest) -> JsonResponse:
    """Ready to take traffic: database, broker and cache all answer."""
    checks = {"database": _check(_database), "broker": _check(queue_depth), "cache": _check(_cache)}
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
    live workers and their hardware price per hour (``ops.workers``). The two reads stand
    apart: an unreadable worker report never drops the queues' samples."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depths = _read(queue_depths)  # one round trip for every queue
        if depths is not None:
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
        rows = _read(workers_seen)
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
