"""The API's own series: requests by route, method and status, and how long they took.

``route`` is the URL pattern (``v1/models/<str:model_id>``), never the path itself, so
ids do not multiply the series; a path that matches no route is ``unmatched``."""

from __future__ import annotations

import os

from prometheus_client import Counter, Histogram, start_http_server

HTTP_REQUESTS = Counter(
    "http_requests_total", "Requests the API answered.", ["route", "method", "status"]
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time the API spent on a request, by route (Server-Timing's app part).",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def request_observe(*, route: str, method: str, status: int, seconds: float) -> None:
    method = method if method in _METHODS else "other"  # a client's method names no series
    HTTP_REQUESTS.labels(route, method, str(status)).inc()
    HTTP_DURATION.labels(route).observe(seconds)


def metrics_serve_from_env() -> int | None:
    """For a process without the API (a consumer, the platform worker): serve its own series
    on ``METRICS_PORT`` when that is set, for a scraper that reaches each process (a
    cluster). ``make run``'s processes share PROMETHEUS_MULTIPROC_DIR instead, and the API's
    /metrics adds them up. Returns the port served on, or None."""
    raw = os.environ.get("METRICS_PORT", "").strip()
    # NOTE: under make run every child inherits the shell's variables: three servers on one
    # port would stop the stack. There the API's /metrics adds the processes up already.
    if not raw or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    try:
        port = int(raw)
    except ValueError:
        raise ValueError(f"METRICS_PORT must be a port number, got {raw!r}") from None
    start_http_server(port)
    return port
