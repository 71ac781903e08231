"""The admin login's address cap, beside django-axes's lockouts: axes locks a username at
one address (so that nobody elsewhere can lock the operator out), which leaves one address
free to try a few passwords against every username it can think of. Past
``ADMIN_LOGIN_ADDRESS_LIMIT`` login attempts from one address (an IPv6 one's /64) within the
cool-off that did not succeed, whatever the usernames, that address's login attempts are
refused (429) until the count expires. 0 turns the cap off.

Each attempt is counted as it arrives, before the password is checked (a check takes a few
hundred ms: counted at its failure, a burst of requests all read the old count and all
passed), and a success takes its count back. Counted in the cache (Redis); while Redis
cannot be reached the cap is not applied, and axes's own lockouts (in the database) still
are. The trade-off: everyone behind one address (a NAT, or a load balancer without
``TRUSTED_PROXY_COUNT``) shares its count."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import Callable
from typing import Any

import redis
from django.conf import settings
from django.contrib.auth.signals import user_logged_in
from django.core.cache import cache
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse

from .client_ip import client_ip

logger = logging.getLogger(__name__)
LOGIN_PATH = "/admin/login/"
REFUSED = "Too many failed logins from this address; try again later."
COUNTED = "_admin_login_counted"


def _key(request: HttpRequest) -> str:
    address = client_ip(request)
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"admin-login-attempts:{address}"
    if ip.version == 6:  # one subscriber has a /64 to pick addresses from
        address = str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return f"admin-login-attempts:{address}"


class AdminLoginAddressLimitMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        limit = settings.ADMIN_LOGIN_ADDRESS_LIMIT
        if limit > 0 and request.method == "POST" and request.path_info == LOGIN_PATH:
            attempts = _count(request)
            if attempts is not None and attempts > limit:
                return HttpResponse(REFUSED, status=429, content_type="text/plain; charset=utf-8")
        return self.get_response(request)


def _count(request: HttpRequest) -> int | None:
    """This attempt counted; the address's attempts so far (None: Redis unreachable)."""
    key = _key(request)
    try:
        cache.add(key, 0, timeout=int(settings.AXES_COOLOFF_TIME.total_seconds()))
        attempts = int(cache.incr(key))
    except (redis.RedisError, ValueError):  # ValueError: the key expired in between
        logger.warning("admin login attempt from %s not counted", client_ip(request))
        return None
    setattr(request, COUNTED, True)
    return attempts


@receiver(user_logged_in)
def _uncount_success(sender: Any, request: Any = None, **_: Any) -> None:
    if request is None or not getattr(request, COUNTED, False):
        return
    with contextlib.suppress(redis.RedisError, ValueError):  # expired: nothing to take back
        cache.decr(_key(request))
