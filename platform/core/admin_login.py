"""The admin login's address cap, beside django-axes's lockouts: axes locks a username at
one address (so that nobody elsewhere can lock the operator out), which leaves one address
free to try a few passwords against every username it can think of. Past
``ADMIN_LOGIN_ADDRESS_LIMIT`` failed logins from one address within the cool-off, whatever
the usernames, that address's login attempts are refused (429) until the count expires.

Counted in the cache (Redis); while Redis cannot be reached the cap is not applied, and
axes's own lockouts (in the database) still are."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis
from django.conf import settings
from django.contrib.auth.signals import user_login_failed
from django.core.cache import cache
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse

from .client_ip import client_ip

logger = logging.getLogger(__name__)
LOGIN_PATH = "/admin/login/"
REFUSED = "Too many failed logins from this address; try again later."


def _key(request: HttpRequest) -> str:
    return f"admin-login-failures:{client_ip(request)}"


def _window_s() -> int:
    return int(settings.AXES_COOLOFF_TIME.total_seconds())


@receiver(user_login_failed)
def _count_failure(sender: Any, credentials: Any = None, request: Any = None, **_: Any) -> None:
    if request is None or request.path_info != LOGIN_PATH:
        return
    key = _key(request)
    try:
        cache.add(key, 0, timeout=_window_s())
        cache.incr(key)
    except (redis.RedisError, ValueError):  # ValueError: the key expired in between
        logger.warning("admin login failure from %s not counted", client_ip(request))


class AdminLoginAddressLimitMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.method == "POST" and request.path_info == LOGIN_PATH and _capped(request):
            return HttpResponse(REFUSED, status=429, content_type="text/plain; charset=utf-8")
        return self.get_response(request)


def _capped(request: HttpRequest) -> bool:
    try:
        failures = cache.get(_key(request)) or 0
    except redis.RedisError:
        return False
    return int(failures) >= settings.ADMIN_LOGIN_ADDRESS_LIMIT
