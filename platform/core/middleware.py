"""Every response carries ``X-Request-Id``; every request gets one first thing, so logs,
usage events and the response all name the same id. Every response also carries
``Server-Timing``: ``app`` is the time the API spent, and views may add their own parts
(``worker``: the time classify waited for the worker) in ``request.server_timing``."""

from __future__ import annotations

import time
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from .ids import new_id


class RequestIdMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        request.request_id = new_id("req")  # type: ignore[attr-defined]
        request.server_timing = {}  # type: ignore[attr-defined]
        response = self.get_response(request)
        timings = {**request.server_timing, "app": (time.perf_counter() - started) * 1000}  # type: ignore[attr-defined]
        response["Server-Timing"] = ", ".join(f"{k};dur={v:.2f}" for k, v in timings.items())
        # An idempotent replay or retry may have swapped in the first attempt's id.
        response["X-Request-Id"] = request.request_id  # type: ignore[attr-defined]
        return response
