"""A subscription read again from Stripe outside any webhook: the daily re-read, and an
upcoming invoice that Stripe refused to preview."""

from __future__ import annotations

import logging

import redis
import stripe

from limits.services import redis_client

from .models import Subscription
from .stripe_client import stripe_error_to_api
from .subscriptions import subscription_refresh_from_stripe

logger = logging.getLogger(__name__)
# An upcoming invoice's refusal re-reads its subscription at most this often: a refusal that
# lasts (one a re-read does not explain) cost two more Stripe calls on every GET.
INVOICE_REREAD_EVERY_S = 300


def subscription_reread(sub: Subscription) -> bool:
    """The subscription as Stripe has it now: with its webhook lost, a cancellation made in
    Stripe left the tenant served on the paid plan (and its upcoming invoice a 503) until
    Stripe happened to send the event again. False where there was nothing to read or
    Stripe refused the read (logged); a Stripe that cannot be reached raises."""
    if not (sub.stripe_customer_id and sub.stripe_subscription_id):
        return False
    try:
        subscription_refresh_from_stripe(
            customer_id=sub.stripe_customer_id,
            stripe_subscription_id=sub.stripe_subscription_id,
            snapshot={},
            event_created=0,
        )
    except stripe.InvalidRequestError as exc:
        logger.error("could not re-read %s from Stripe: %s", sub.stripe_subscription_id, exc)
        return False
    return True


def subscription_reread_changed(sub: Subscription) -> bool:
    """For an upcoming invoice Stripe refused to preview: re-read ``sub`` (at most once
    every ``INVOICE_REREAD_EVERY_S``), True when that changed it (another Stripe
    subscription, status, plan or period), so the invoice is worth asking for again. A
    Stripe that cannot be reached is the contract's 503, as the preview's own errors."""
    try:
        first = redis_client().set(
            f"billing:invoice_reread:{sub.pk}", 1, nx=True, ex=INVOICE_REREAD_EVERY_S
        )
    except redis.RedisError:
        first = True  # (unthrottled while Redis is away: still one re-read a GET at most)
    if not first:
        return False
    seen = _state(sub)
    try:
        if not subscription_reread(sub):
            return False
    except stripe.StripeError as exc:
        raise stripe_error_to_api(exc) from exc
    sub.refresh_from_db()
    return seen != _state(sub)


def _state(sub: Subscription) -> tuple[object, ...]:
    return (sub.stripe_subscription_id, sub.status, sub.plan_id, sub.current_period_start)
