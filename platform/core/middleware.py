"""Every response carries ``X-Request-Id``; every request gets one first thing, so logs,
usage events and the response all name the same id."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from .ids import new_id


class RequestIdMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.request_id = new_id("req")  # type: ignore[attr-defined]
        response = self.get_response(request)
        # An idempotent replay or retry may have swapped in the first attempt's id.
        response["X-Request-Id"] = request.request_id  # type: ignore[attr-defined]
        return response
