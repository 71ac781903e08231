"""How many request bodies one tenant may be receiving at once in an API process.

The server hands a request to the application before its body has arrived, and a read of a
body that has not arrived waits for it, holding one of the process's request threads: a
tenant's key and a few dozen connections that sent headers and then a trickle of body held
them all, and every tenant's requests (and the health probes) went unanswered for as long as
the connections stayed open. A key's bodies are now read through a slot of its tenant's,
taken at the first read and given back once the body is in (or the request ends): past
``BODY_READS_PER_TENANT`` at once, the next one is a 429 at once, holding nothing, and the
other tenants keep the rest of the threads. (Requests without a valid key cannot get this
far: ``core.middleware`` drains and refuses their bodies with few threads.)"""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings

from .errors import APIError

_counts: dict[str, int] = {}
_lock = threading.Lock()

MESSAGE = (
    "This tenant already has {limit} requests whose bodies are still arriving at this "
    "server; send this one again once they are in."
)


class TenantBodyStream:
    """A request's body stream (Django's ``HttpRequest._stream``), read under one of its
    tenant's slots."""

    def __init__(self, stream: Any, tenant_id: str) -> None:
        self._stream, self._tenant_id = stream, tenant_id
        self._held = False

    def _whole(self) -> bool:
        # NOTE: Django's LimitedStream knows where the declared length ends (_pos, limit).
        return bool(getattr(self._stream, "_pos", 0) >= getattr(self._stream, "limit", 1 << 62))

    def _take(self) -> None:
        if self._held or self._whole():
            return
        limit = settings.BODY_READS_PER_TENANT
        with _lock:
            if limit and _counts.get(self._tenant_id, 0) >= limit:
                raise APIError(
                    MESSAGE.format(limit=limit),
                    code="concurrency_limited",
                    status=429,
                    headers={"Retry-After": "1"},
                )
            _counts[self._tenant_id] = _counts.get(self._tenant_id, 0) + 1
        self._held = True

    def release(self) -> None:
        """Give the slot back (the body is in, or the request is over); idempotent. A later
        read (``core.middleware`` draining what the request left) takes one again."""
        if not self._held:
            return
        self._held = False
        with _lock:
            left = _counts.get(self._tenant_id, 1) - 1
            if left > 0:
                _counts[self._tenant_id] = left
            else:
                _counts.pop(self._tenant_id, None)

    def _after(self, data: bytes, size: int | None) -> bytes:
        if self._whole() or (not data and size != 0):
            self.release()
        return data

    def close(self) -> None:
        self.release()
        self._stream.close()

    def read(self, size: int | None = -1) -> bytes:
        self._take()
        return self._after(self._stream.read(size), size)

    def readline(self, size: int | None = -1) -> bytes:
        self._take()
        return self._after(self._stream.readline(size), size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def body_stream_guard(django_request: Any, tenant_id: str) -> None:
    """Read the request's body, from now on, under a slot of the tenant's (a no-op once
    done, or once the body was read)."""
    stream = getattr(django_request, "_stream", None)
    if stream is None or isinstance(stream, TenantBodyStream):
        return
    if getattr(django_request, "_read_started", False) or hasattr(django_request, "_body"):
        return
    django_request._stream = TenantBodyStream(stream, tenant_id)


def body_stream_release(django_request: Any) -> None:
    stream = getattr(django_request, "_stream", None)
    if isinstance(stream, TenantBodyStream):
        stream.release()
