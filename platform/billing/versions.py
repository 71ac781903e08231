"""Moving a plan's subscribers onto its current version.

A subscriber keeps the version it signed: asking for its plan again changes nothing
(``subscription_change``), so an operator's new terms, a price cut above all, reached only
new subscribers, while the old ones went on paying the old price. The operator moves them,
from the plans admin (*Move subscribers*) or ``manage.py move_subscribers SLUG``: each as a
plan change of its own (the tenant's lock, Stripe's proration of the old fee against the
new, the new limits on its next request). Free's tenants need no move: they follow free's
current version already (``subscription_get_or_create``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import stripe

from core.errors import APIError
from plans.models import Plan

from .models import Subscription
from .subscriptions import FREE_SLUG, subscription_change


@dataclass
class VersionMove:
    plan_id: str
    moved: list[str] = field(default_factory=list)  # tenant ids
    refused: list[tuple[str, str]] = field(default_factory=list)  # (tenant id, why)


def subscribers_move_to_current(*, plan: Plan) -> VersionMove:
    """Move every tenant on an older version of ``plan``'s slug onto ``plan``, its current
    version. One refused (past due, another currency, Stripe refusing or unreachable) is
    reported and left where it was; the others are moved all the same."""
    if not plan.is_current:
        raise ValueError(f"{plan.pk} is not the current version of {plan.slug}")
    result = VersionMove(plan.pk)
    if plan.slug == FREE_SLUG:
        return result
    # NOTE: unscoped on purpose: every tenant on the plan, as the operator asks.
    older = (
        Subscription.objects.unscoped()
        .filter(plan__slug=plan.slug)
        .exclude(plan_id=plan.pk)
        .select_related("tenant")
        .order_by("tenant_id")
    )
    for sub in older:
        if not sub.stripe_subscription_id:
            result.refused.append((sub.tenant_id, "no Stripe subscription to move"))
            continue
        try:
            subscription_change(tenant=sub.tenant, plan_slug=plan.slug, to_current_version=True)
        except (APIError, stripe.StripeError) as exc:
            why = exc.message if isinstance(exc, APIError) else str(exc)
            result.refused.append((sub.tenant_id, why))
            continue
        result.moved.append(sub.tenant_id)
    return result
