"""Plans to Stripe: one Product per plan slug, one legacy recurring monthly Plan per plan
version for the base fee. Usage is not a Stripe price (the platform rates it and pushes
invoice items), so a version's Stripe plan only ever carries its base fee.

Idempotent three ways: stored ids are reused; the Stripe ids are derived from ours
(``margin-pro``, ``margin-pro-v1``), so a lost id is found again rather than duplicated;
and every create carries an idempotency key. A version is never edited in place, so a
Stripe plan (whose amount Stripe never lets change) maps 1:1 to a version."""

from __future__ import annotations

import logging
from typing import Any

import stripe
from django.db import transaction

from plans.models import Plan

from .stripe_client import is_already_exists, is_missing, stripe_api

logger = logging.getLogger(__name__)


def stripe_product_id(plan: Plan) -> str:
    return f"margin-{plan.slug}"


def stripe_plan_id(plan: Plan) -> str:
    return f"margin-{plan.slug}-v{plan.version}"


def _retrieve_or_create(resource: Any, object_id: str, params: dict[str, Any]) -> str:
    """The Stripe object with our id: created with an idempotency key, or found."""
    try:
        return str(resource.retrieve(object_id).id)
    except stripe.StripeError as exc:
        if not is_missing(exc):
            raise
    try:
        created = resource.create(id=object_id, idempotency_key=f"create-{object_id}", **params)
        return str(created.id)
    except stripe.StripeError as exc:
        if is_already_exists(exc):  # created by a concurrent sync
            return str(resource.retrieve(object_id).id)
        raise


def plan_sync_to_stripe(*, plan: Plan) -> Plan:
    """Make sure the plan version exists in Stripe; store its ids. Free plans (no base fee)
    are never subscribed in Stripe and are skipped."""
    if not plan.base_fee:
        return plan
    api = stripe_api()
    product_id = plan.stripe_product_id or _retrieve_or_create(
        api.Product,
        stripe_product_id(plan),
        {"name": plan.name, "metadata": {"plan_slug": plan.slug}},
    )
    plan_id = plan.stripe_plan_id or _retrieve_or_create(
        api.Plan,
        stripe_plan_id(plan),
        {
            "product": product_id,
            "amount": plan.base_fee,
            "currency": plan.currency,
            "interval": "month",
            "nickname": f"{plan.name} v{plan.version}",
            "metadata": {"plan_id": plan.id},
        },
    )
    if (plan.stripe_product_id, plan.stripe_plan_id) != (product_id, plan_id):
        with transaction.atomic():
            Plan.objects.filter(pk=plan.pk).update(
                stripe_product_id=product_id, stripe_plan_id=plan_id
            )
        plan.stripe_product_id, plan.stripe_plan_id = product_id, plan_id
        logger.info("plan %s synced to Stripe as %s / %s", plan.id, product_id, plan_id)
    return plan


def plans_sync_to_stripe(*, plans: list[Plan] | None = None) -> list[Plan]:
    """Every paid plan version (or the given ones)."""
    chosen = plans if plans is not None else list(Plan.objects.filter(base_fee__gt=0))
    return [plan_sync_to_stripe(plan=plan) for plan in chosen]
