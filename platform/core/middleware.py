"""Every response carries ``X-Request-Id``; every request gets one first thing, so logs,
usage events and the response all name the same id. Every response also carries
``Server-Timing``: ``app`` is the time the API spent, and views may add their own parts
(``worker``: the time classify waited for the worker) in ``request.server_timing``."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import redis
import stripe
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.core.handlers.wsgi import LimitedStream
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseRedirect
from django.utils.html import escape

from ops.metrics import request_observe

from .body_slots import TenantBodyStream, body_stream_guard
from .errors import APIError
from .ids import new_id
from .statement_timeout import statement_cancelled

logger = logging.getLogger(__name__)

# The only pages with a logged-in user: sessions, request.user and messages are theirs.
ADMIN_PREFIX = "/admin/"
# A request body the app left unread is read and dropped up to this size (``_drain``):
# the largest the API takes (a dataset upload) and then some.
DRAIN_MAX_BYTES = 64 * 1024 * 1024
# For callers who did not authenticate (see ``_drain``): a few threads of each process.
ANONYMOUS_DRAINS = 4
ANONYMOUS_DRAIN_MAX_BYTES = 1024 * 1024
_anonymous_drains = threading.BoundedSemaphore(ANONYMOUS_DRAINS)


class RequestIdMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        request.request_id = new_id("req")  # type: ignore[attr-defined]
        request.server_timing = {}  # type: ignore[attr-defined]
        response = self.get_response(request)
        _drain(request)
        spent = time.perf_counter() - started
        match = request.resolver_match
        route = match.route if match is not None and match.route else "unmatched"
        request_observe(
            route=route, method=request.method or "", status=response.status_code, seconds=spent
        )
        timings = {**request.server_timing, "app": spent * 1000}  # type: ignore[attr-defined]
        response["Server-Timing"] = ", ".join(f"{k};dur={v:.2f}" for k, v in timings.items())
        # An idempotent replay or retry may have swapped in the first attempt's id.
        response["X-Request-Id"] = request.request_id  # type: ignore[attr-defined]
        return response


def _drain(request: HttpRequest) -> None:
    """Read what is left of the request's body. A request refused before its body is read
    (401, 403, 413...) would otherwise leave it in a keep-alive connection, which makes the
    HTTP server drop the connection, at times without answering the client's next request
    on it (seen with granian: 6 of 40 POSTs refused with a 401 in a row). A body bigger
    than ``DRAIN_MAX_BYTES`` is left: the connection is then the server's to close.

    A read has no timeout here, and ~40 connections that announce a body and never send it
    held every API thread (the server answered nothing while they stayed open). So for a
    caller who did not authenticate (no key, a wrong one, a probe, an unknown route) at most
    ``ANONYMOUS_DRAINS`` threads of a process drain at once, each at most
    ``ANONYMOUS_DRAIN_MAX_BYTES``; past that the connection is dropped after the answer."""
    tenant = getattr(getattr(request, "user", None), "tenant", None)  # a key's caller
    if tenant is not None and isinstance(getattr(request, "_stream", None), LimitedStream):
        # A body that no view read (a GET's, or a POST's refused before its view, for its
        # key's scope): under the tenant's slots as well. Read here with no slot and no time
        # limit, 40 connections that announced one and never sent it held every thread.
        body_stream_guard(request, tenant.pk)
    stream = getattr(request, "_stream", None)
    if isinstance(stream, TenantBodyStream):
        # A key's body: drained under a slot of its tenant's, as it is read (body_slots);
        # with every slot taken it is left (the connection the server's to close), or a
        # tenant's slow bodies would hold threads here instead.
        try:
            _read_out(stream, DRAIN_MAX_BYTES)
        except APIError:
            pass
        finally:
            stream.release()
        return
    if not isinstance(stream, LimitedStream):  # read into memory already, or not over WSGI
        return
    if getattr(getattr(request, "user", None), "is_authenticated", False):
        _read_out(stream, DRAIN_MAX_BYTES)
    elif _anonymous_drains.acquire(blocking=False):
        try:
            _read_out(stream, ANONYMOUS_DRAIN_MAX_BYTES)
        finally:
            _anonymous_drains.release()


@contextmanager
def anonymous_body_read() -> Iterator[bool]:
    """A place among this process's readers of bodies sent without a key (the same
    ``ANONYMOUS_DRAINS`` as ``_drain``'s), if one is free: whether it was. For a view that
    must read a keyless body (Stripe's webhooks, checked once their body is in): all such
    readers together hold at most these threads, whatever the bodies hold back."""
    taken = _anonymous_drains.acquire(blocking=False)
    try:
        yield taken
    finally:
        if taken:
            _anonymous_drains.release()


def _read_out(stream: LimitedStream | TenantBodyStream, limit: int) -> None:
    left = limit
    try:
        while left > 0 and (chunk := stream.read(min(left, 1 << 16))):
            left -= len(chunk)
    except OSError:  # the client went away
        pass


class _AdminOnly:
    """Runs the middleware it is mixed into for the admin site only. API calls authenticate
    with keys, never with a session cookie; skipping these three for them saved ~0.2 ms of
    CPU a request. They stay subclasses of Django's own, which the admin's checks require."""

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info.startswith(ADMIN_PREFIX):
            return super().__call__(request)  # type: ignore[misc]
        return cast(HttpResponse, cast(Any, self).get_response(request))


class AdminSessionMiddleware(_AdminOnly, SessionMiddleware):
    pass


class AdminAuthenticationMiddleware(_AdminOnly, AuthenticationMiddleware):
    pass


class AdminMessageMiddleware(_AdminOnly, MessageMiddleware):
    pass


class AdminUnavailableMiddleware:
    """An admin change that needs Redis or Stripe while it cannot be reached, or that a
    service refuses (an ``APIError``), is told to the operator on the page they came from,
    never a 500. The admin writes that reach Redis run in one transaction (Django's change
    and delete views; list actions through ``core.admin.AtomicActionsAdmin``), so by the
    time this runs they have been rolled back: nothing was changed. (The plans' *Sync to
    Stripe* action commits plan by plan and reports its own failures.) It also refuses an
    admin address holding a NUL (a 400) before any query reads it."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info.startswith(ADMIN_PREFIX) and _holds_nul(request):
            # NOTE: PostgreSQL's text holds no NUL: a filter (?model=%00) or an object id
            # with one was a 500 on every admin list and change page (an operator's audit).
            return HttpResponseBadRequest(
                "<h1>Bad request</h1><p>The address holds a NUL character, which no field"
                " here can hold.</p>"
            )
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not request.path_info.startswith(ADMIN_PREFIX):
            return None
        reason = _unavailable_reason(exception)
        if reason is None:
            return None
        logger.warning("admin %s %s not done: %r", request.method, request.path, exception)
        text = f"Nothing was changed: {reason}"
        if request.method == "POST":
            messages.error(request, text)
            return HttpResponseRedirect(request.get_full_path())
        status = exception.status if isinstance(exception, APIError) else 503
        return HttpResponse(f"<h1>Not done</h1><p>{escape(text)}</p>", status=status)


def _holds_nul(request: HttpRequest) -> bool:
    return "\x00" in request.path_info or any(
        "\x00" in name or any("\x00" in value for value in values)
        for name, values in request.GET.lists()
    )


def _unavailable_reason(exception: Exception) -> str | None:
    """What the operator reads about a failure that is not the admin's own bug, or None."""
    if isinstance(exception, APIError):
        return exception.message
    if isinstance(exception, redis.ConnectionError | redis.TimeoutError):
        return "Redis cannot be reached. Retry once it is back."
    if isinstance(exception, redis.RedisError):
        return f"Redis refused the command ({exception}). Retry once that is fixed."
    if isinstance(exception, DatabaseError) and statement_cancelled(exception):
        # The admin runs in the API's processes, under their statement timeout
        # (core.statement_timeout); a write's transaction was rolled back with it.
        limit = settings.DATABASE_STATEMENT_TIMEOUT_MS / 1000
        return (
            f"A query ran past the statement timeout ({limit:g} s, DATABASE_STATEMENT_TIMEOUT_MS)"
            " and the database stopped it. Retry, or narrow the page (a filter, a search)."
        )
    if isinstance(exception, stripe.StripeError):
        detail = exception.user_message or type(exception).__name__
        return f"Stripe did not accept the call ({detail}). Retry once it is back."
    return None
