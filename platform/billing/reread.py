"""A subscription read again from Stripe outside any webhook: the daily re-read, and an
upcoming invoice that Stripe refused to preview."""

from __future__ import annotations

import logging

import stripe

from tenants.models import Tenant

from .subscriptions import subscription_get_or_create, subscription_refresh_from_stripe

logger = logging.getLogger(__name__)


def subscription_reread(tenant: Tenant) -> bool:
    """The tenant's subscription as Stripe has it now: with its webhook lost, a cancellation
    made in Stripe left the tenant served on the paid plan (and its upcoming invoice a 503)
    until Stripe happened to send the event again. False where there was nothing to read or
    Stripe refused the read (logged); a Stripe that cannot be reached raises."""
    sub = subscription_get_or_create(tenant=tenant)
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
