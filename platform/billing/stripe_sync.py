"""Plans to Stripe: one Product per plan slug, one legacy recurring monthly Plan per plan
version for the base fee. Usage is not a Stripe price (the platform rates it and pushes
invoice items), so a version's Stripe plan only ever carries its base fee.

Idempotent three ways: stored ids are reused (and made again in an account that lacks them);
the Stripe ids are derived from ours
(``margin-pro``, ``margin-pro-v1``), so a lost id is found again rather than duplicated;
and every create carries an idempotency key. A version is never edited in place, so a
Stripe plan (whose amount Stripe never lets change) maps 1:1 to a version; one found under
a version's id that charges anything else (left by a version deleted before ids were kept,
or by another deployment on the same Stripe account) is refused, never reused."""

from __future__ import annotations

import logging
from typing import Any

import stripe
from django.db import transaction

from plans import messages as plan_messages
from plans.models import Plan

from . import messages
from .stripe_client import (
    OPERATOR_RETRY_S,
    BillingUnavailable,
    as_dict,
    is_already_exists,
    is_missing,
    stripe_api,
)

logger = logging.getLogger(__name__)


def stripe_product_id(plan: Plan) -> str:
    return f"margin-{plan.slug}"


def stripe_plan_id(plan: Plan) -> str:
    return f"margin-{plan.slug}-v{plan.version}"


class StripePlanMismatch(BillingUnavailable):
    """Stripe has a plan under a version's id that charges other terms than the version.
    A client asking for the plan sees it as not for sale (503); the operator's text (``str``,
    what the admin and the command show) says which terms differ."""

    def __init__(self, plan: Plan, stripe_plan: str, found: str, expected: str) -> None:
        super().__init__(
            messages.PLAN_NOT_SYNCED.format(plan=plan.slug), retry_after_s=OPERATOR_RETRY_S
        )
        self.detail = plan_messages.STRIPE_PLAN_MISMATCH.format(
            stripe_plan=stripe_plan, plan=plan.id, found=found, expected=expected
        )

    def __str__(self) -> str:
        return self.detail


def _retrieve_or_create(resource: Any, object_id: str, params: dict[str, Any]) -> Any:
    """The Stripe object with our id: created with an idempotency key, or found."""
    try:
        return resource.retrieve(object_id)
    except stripe.StripeError as exc:
        if not is_missing(exc):
            raise
    try:
        return resource.create(id=object_id, idempotency_key=f"create-{object_id}", **params)
    except stripe.StripeError as exc:
        if is_already_exists(exc):  # created by a concurrent sync
            return resource.retrieve(object_id)
        raise


def _charges(amount: Any, currency: Any, interval: Any, interval_count: Any) -> str:
    return f"{amount} {str(currency).upper()} every {interval_count} {interval}"


def _stripe_plan_check(plan: Plan, found: Any) -> None:
    """Refuse a Stripe plan found under the version's id that does not charge the version's
    base fee, in its currency, monthly: subscribing to it would bill other terms."""
    stripe_plan = as_dict(found)
    has = (stripe_plan.get("amount"), stripe_plan.get("currency"), stripe_plan.get("interval"),
           stripe_plan.get("interval_count") or 1)  # fmt: skip
    wants = (plan.base_fee, plan.currency, "month", 1)
    if has != wants:
        mismatch = StripePlanMismatch(
            plan, str(stripe_plan.get("id")), _charges(*has), _charges(*wants)
        )
        logger.error("%s", mismatch.detail)
        raise mismatch


def plan_sync_to_stripe(*, plan: Plan, verify: bool = False) -> Plan:
    """Make sure the plan version exists in Stripe; store its ids. Free plans (no base fee)
    are never subscribed in Stripe and are skipped. Stored ids are taken as they are unless
    ``verify`` (the operator's sync, not each upgrade: two Stripe reads more a change)."""
    if not plan.base_fee or (plan.stripe_product_id and plan.stripe_plan_id and not verify):
        return plan
    api = stripe_api()
    # NOTE: stored ids are looked up too, and made again where Stripe lacks them: a sync
    # against another account (a test key's, then the live one's; an emulator restarted)
    # said it synced and made nothing, and every upgrade was then refused (an outside audit).
    product_id = str(
        _retrieve_or_create(
            api.Product,
            plan.stripe_product_id or stripe_product_id(plan),
            {"name": plan.name, "metadata": {"plan_slug": plan.slug}},
        ).id
    )
    found = _retrieve_or_create(
        api.Plan,
        plan.stripe_plan_id or stripe_plan_id(plan),
        {
            "product": product_id,
            "amount": plan.base_fee,
            "currency": plan.currency,
            "interval": "month",
            "nickname": f"{plan.name} v{plan.version}",
            "metadata": {"plan_id": plan.id},
        },
    )
    _stripe_plan_check(plan, found)
    plan_id = str(found.id)
    if (plan.stripe_product_id, plan.stripe_plan_id) != (product_id, plan_id):
        with transaction.atomic():
            Plan.objects.filter(pk=plan.pk).update(
                stripe_product_id=product_id, stripe_plan_id=plan_id
            )
        plan.stripe_product_id, plan.stripe_plan_id = product_id, plan_id
        logger.info("plan %s synced to Stripe as %s / %s", plan.id, product_id, plan_id)
    return plan


def plans_sync_to_stripe(*, plans: list[Plan] | None = None) -> list[Plan]:
    """Every paid plan version (or the given ones), their stored ids checked in Stripe."""
    chosen = plans if plans is not None else list(Plan.objects.filter(base_fee__gt=0))
    return [plan_sync_to_stripe(plan=plan, verify=True) for plan in chosen]
