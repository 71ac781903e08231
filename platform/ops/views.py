"""Probes and metrics for operators and orchestrators (no API key: they carry no data)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

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
from inference.dispatch import queue_depth


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


class _QueueDepth:
    """Classifications waiting for a worker, read from the broker at scrape time (what an
    autoscaler scales inference workers on)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            depth = queue_depth(fresh=True)
        except Exception:  # the broker is down: no sample rather than a failed scrape
            return
        yield GaugeMetricFamily(
            "inference_queue_messages", "Messages waiting on the inference queue.", value=depth
        )


def metrics(request: HttpRequest) -> HttpResponse:
    registry: CollectorRegistry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Several API processes: add up what each wrote to the shared directory.
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    body = generate_latest(registry)
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(_QueueDepth())
    return HttpResponse(body + generate_latest(scrape), content_type=CONTENT_TYPE_LATEST)
