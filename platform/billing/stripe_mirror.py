"""The local subscription row follows Stripe's: a subscription object (re-read, or an
event's snapshot) mapped onto our status, plan, period and past-due date."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, NamedTuple

from django.utils import timezone

from limits.services import free_plan_current
from plans.models import Plan

from .models import Subscription
from .periods import free_period_from
from .stripe_client import stripe_moment

logger = logging.getLogger(__name__)

# Stripe's statuses onto ours. `incomplete` (first payment not through) and `unpaid`
# (retries exhausted, invoice left open) both mean: money is owed.
STATUS_FROM_STRIPE = {
    "active": Subscription.Status.ACTIVE,
    "trialing": Subscription.Status.TRIALING,
    "past_due": Subscription.Status.PAST_DUE,
    "unpaid": Subscription.Status.PAST_DUE,
    "incomplete": Subscription.Status.PAST_DUE,
    "canceled": Subscription.Status.CANCELED,
    "incomplete_expired": Subscription.Status.CANCELED,
}


def _at(seconds: int | None) -> datetime | None:
    return datetime.fromtimestamp(int(seconds), tz=UTC) if seconds else None


def first_item(stripe_sub: dict[str, Any]) -> dict[str, Any]:
    data = (stripe_sub.get("items") or {}).get("data") or [{}]
    return dict(data[0])


def _stripe_period(stripe_sub: dict[str, Any]) -> tuple[datetime | None, datetime | None]:
    # Newer API versions keep the period on the item; the emulator on the subscription.
    item = first_item(stripe_sub)
    start = item.get("current_period_start") or stripe_sub.get("current_period_start")
    end = item.get("current_period_end") or stripe_sub.get("current_period_end")
    return _at(start), _at(end)


def stripe_period_start(stripe_sub: dict[str, Any]) -> datetime | None:
    return _stripe_period(stripe_sub)[0]


def _stripe_plan(stripe_sub: dict[str, Any]) -> Plan | None:
    item = first_item(stripe_sub)
    price = item.get("plan") or item.get("price") or stripe_sub.get("plan") or {}
    price_id = price.get("id") if isinstance(price, dict) else price
    return Plan.objects.filter(stripe_plan_id=price_id).first() if price_id else None


def _past_due_since(stripe_sub: dict[str, Any]) -> datetime | None:
    """Unpaid since the latest invoice was finalised (needs ``latest_invoice`` expanded)."""
    invoice = stripe_sub.get("latest_invoice")
    if not isinstance(invoice, dict):
        return None
    transitions = invoice.get("status_transitions") or {}
    return _at(transitions.get("finalized_at") or invoice.get("created"))


def stripe_apply(sub: Subscription, stripe_sub: dict[str, Any], observed_at: int) -> None:
    """Make the row follow a Stripe subscription (re-read, or an event's snapshot)."""
    status = STATUS_FROM_STRIPE.get(str(stripe_sub.get("status")), Subscription.Status.PAST_DUE)
    sub.stripe_updated_at = observed_at
    if status == Subscription.Status.CANCELED:
        # Cancelled in Stripe (by us moving to free, or by dunning): the tenant is on free.
        if sub.stripe_subscription_id:  # not moved to free already (by a plan change)
            sub.current_period_start, sub.current_period_end = free_period_from(timezone.now())
        sub.plan = free_plan_current()
        sub.stripe_subscription_id = ""
        if sub.status != Subscription.Status.PAST_DUE:
            sub.status, sub.past_due_since = Subscription.Status.ACTIVE, None
        # A debt does not leave with the subscription (dunning cancelled it, or the tenant
        # moved to free): past due until its invoice is paid (webhooks.handle_invoice).
        return
    plan = _stripe_plan(stripe_sub)
    if plan is None:
        logger.error("Stripe subscription %s is on a plan we do not know", stripe_sub.get("id"))
    else:
        sub.plan = plan
    sub.status = status
    sub.stripe_subscription_id = str(stripe_sub["id"])
    start, end = _stripe_period(stripe_sub)
    if start and end:
        sub.current_period_start, sub.current_period_end = start, end
    if status == Subscription.Status.PAST_DUE:
        sub.past_due_since = _past_due_since(stripe_sub) or sub.past_due_since or timezone.now()
    else:
        sub.past_due_since = None


def free_apply(sub: Subscription, free: Plan, *, keep_period: bool = False) -> None:
    """Put the row on ``free`` (a plan change there), its period from now (or, from a plan
    without a fee, the period it is in: ``keep_period``)."""
    sub.plan = free
    sub.stripe_subscription_id = ""
    if sub.status != Subscription.Status.PAST_DUE:
        sub.status, sub.past_due_since = Subscription.Status.ACTIVE, None
    # (Past due stays past due on free until its invoice is paid: webhooks.handle_invoice.)
    sub.stripe_updated_at = stripe_moment()  # (after the cancel: see stripe_moment)
    if not keep_period:
        sub.current_period_start, sub.current_period_end = free_period_from(timezone.now())


class Enforced(NamedTuple):
    """What requests are admitted under (``limits.services.enforcement_for``)."""

    plan_id: str
    status: str
    past_due_since: datetime | None
    period_start: datetime
    period_end: datetime
    stripe_subscription_id: str


def enforced_fields(sub: Subscription) -> Enforced:
    return Enforced(sub.plan_id, sub.status, sub.past_due_since, sub.current_period_start,
                    sub.current_period_end, sub.stripe_subscription_id)  # fmt: skip
