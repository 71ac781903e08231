"""The one place the official ``stripe`` library is configured, from settings.

Module-level configuration (``stripe.api_key``, ``stripe.api_base``) is what the library's
resource classes read; it is re-applied from settings on every use, so a test that points
STRIPE_API_BASE at its emulator, or a deployment that rotates the key, is picked up without
a restart. Helpers here turn the library's objects into plain dicts (stripe 16 objects are
not dicts) and its errors into the API's error shape.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any

import stripe
from django.conf import settings

from core.errors import APIError

from . import messages

logger = logging.getLogger(__name__)

# NOTE: the library pins its own API version (2026-10-28 for stripe 16); objects are read
# defensively below because the emulator answers in an older shape.
NETWORK_RETRIES = 2
# Connecting to Stripe takes at most this long (each try; answering, STRIPE_TIMEOUT_S).
CONNECT_TIMEOUT_S = 5.0
# A request waits this long for one of the STRIPE_CONCURRENCY places before it gives up.
QUEUE_TIMEOUT_S = 1.0
# Retry-After of a 503 that waits on the operator (billing not configured, Stripe refusing
# this account's requests): a retry within seconds would only meet the same answer.
OPERATOR_RETRY_S = 60


class BillingUnavailable(APIError):
    """503: Stripe did not answer (``Retry-After`` a few seconds), or cannot be used until
    the operator acts (not configured, or refusing: a minute)."""

    status = 503
    default_code = "billing_unavailable"

    def __init__(self, message: str, *, retry_after_s: int = 5) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class PaymentRequired(APIError):
    status = 402
    default_code = "payment_required"


def stripe_configured() -> bool:
    return bool(settings.STRIPE_API_KEY)


def stripe_api() -> Any:
    """The configured ``stripe`` module. Raises 503 when no key is set: free plans work
    without Stripe, paid ones cannot."""
    if not stripe_configured():
        raise BillingUnavailable(messages.STRIPE_NOT_CONFIGURED, retry_after_s=OPERATOR_RETRY_S)
    stripe.api_key = settings.STRIPE_API_KEY
    stripe.api_base = settings.STRIPE_API_BASE.rstrip("/")
    stripe.max_network_retries = NETWORK_RETRIES
    stripe.default_http_client = _http_client(
        settings.STRIPE_TIMEOUT_S, settings.STRIPE_CONCURRENCY
    )
    return stripe


class _BoundedClient(stripe.RequestsClient):
    """The library's ``requests`` client, each try bounded in time, and in how many of this
    process's threads make one at once: a request that finds no place within
    ``QUEUE_TIMEOUT_S`` fails as a connection error would (a 503 ``billing_unavailable``),
    not tried again: nothing was sent, and the library's tries would hold the thread ~4 s
    more, queueing again (a review)."""

    def __init__(self, *, timeout: float, concurrency: int) -> None:
        super().__init__(timeout=(CONNECT_TIMEOUT_S, timeout))
        self._places = threading.BoundedSemaphore(max(1, concurrency))

    def request(self, *args: Any, **kwargs: Any) -> Any:
        if not self._places.acquire(timeout=QUEUE_TIMEOUT_S):
            raise stripe.APIConnectionError(messages.STRIPE_BUSY, should_retry=False)
        try:
            return super().request(*args, **kwargs)
        finally:
            self._places.release()


@functools.cache
def _http_client(timeout: float, concurrency: int) -> _BoundedClient:
    return _BoundedClient(timeout=timeout, concurrency=concurrency)


def as_dict(obj: Any) -> dict[str, Any]:
    """A Stripe object (or an already plain dict) as a plain, recursive dict."""
    if obj is None:
        return {}
    if isinstance(obj, dict) and not hasattr(obj, "to_dict"):
        return obj
    return dict(obj.to_dict())


def stripe_error_to_api(exc: stripe.StripeError) -> APIError:
    """What the client of our API sees when Stripe says no."""
    if isinstance(exc, stripe.CardError) or getattr(exc, "http_status", None) == 402:
        return PaymentRequired(
            messages.PAYMENT_DECLINED.format(reason=exc.user_message or "declined"),
            code="card_declined",
        )
    if isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError | stripe.APIError):
        return BillingUnavailable(messages.STRIPE_UNAVAILABLE)
    # It answered, and refused: a state or set-up of ours it does not accept (a subscription
    # cancelled there and not here yet, a key without access). Not the caller's to fix by
    # retrying at once; the log has Stripe's own message.
    logger.error("Stripe refused a request: %s", exc)
    return BillingUnavailable(
        messages.STRIPE_REFUSED.format(code=exc.code or type(exc).__name__),
        retry_after_s=OPERATOR_RETRY_S,
    )


def is_already_exists(exc: stripe.StripeError) -> bool:
    """Creating an object with an id that exists: Stripe says ``resource_already_exists``
    (400), the emulator says 409."""
    return exc.code == "resource_already_exists" or getattr(exc, "http_status", None) == 409


def is_missing(exc: stripe.StripeError) -> bool:
    return exc.code == "resource_missing" or getattr(exc, "http_status", None) == 404


def stripe_moment() -> int:
    """Now, in unix microseconds: what a mirrored Stripe object's ``stripe_updated_at`` is
    stamped in. A re-read is stamped with the moment before its call (no earlier than the
    state it returns), a change of ours with the moment after Stripe answered (no earlier
    than the state it made): a read is newer than what the row holds only when it began
    after that. (Whole seconds let a read begun before a change, in the same second,
    overwrite it: a plan change undone, a paid invoice shown open again.)"""
    return time.time_ns() // 1000


# A stamp below this is whole seconds (year 5138 in seconds): written by a process of the
# release before billing 0008 while it still ran beside this one (a rolling deploy).
MICROSECONDS_FROM = 10**14


def as_microseconds(stamp: int) -> int:
    """A stored ``stripe_updated_at`` in microseconds, whichever unit wrote it (a second is
    taken as its last microsecond, as billing 0008 converts it)."""
    return stamp if stamp >= MICROSECONDS_FROM or stamp <= 0 else stamp * 1_000_000 + 999_999


def subscription_of(obj: dict[str, Any]) -> str | None:
    """The subscription an invoice or an invoice item is on, if any: newer API versions name
    it under parent.subscription_details, older ones at the top."""
    parent = (obj.get("parent") or {}).get("subscription_details") or {}
    found = parent.get("subscription") or obj.get("subscription")
    if isinstance(found, dict):
        found = found.get("id")
    return str(found) if found else None
