"""A request's client address, for what is keyed by it (the admin login's lockouts)."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest


def client_ip(request: HttpRequest) -> str:
    """``REMOTE_ADDR``, or behind ``TRUSTED_PROXY_COUNT`` proxies the address the outermost
    of them was reached from: that many entries from the end of ``X-Forwarded-For`` (each
    proxy appends its peer; what lies further left came from the client, who can write
    anything there). Fewer entries than proxies (a request that did not come through them,
    e.g. from inside the cluster, whose header says what its sender likes): the peer."""
    peer = str(request.META.get("REMOTE_ADDR") or "")
    proxies = settings.TRUSTED_PROXY_COUNT
    if proxies <= 0:
        return peer
    forwarded = [
        hop.strip() for hop in str(request.META.get("HTTP_X_FORWARDED_FOR", "")).split(",")
    ]
    forwarded = [hop for hop in forwarded if hop]
    if len(forwarded) < proxies:
        return peer
    return forwarded[-proxies]
