"""A paid plan in Stripe: the subscription created or changed, and a declined first payment
undone without taking the customer's pending items with it."""

from __future__ import annotations

import logging
from typing import Any

import stripe

from plans.models import Plan
from tenants.models import Tenant

from . import messages
from .models import Subscription, UsageChargePush
from .stripe_client import PaymentRequired, as_dict, stripe_api
from .stripe_customers import customer_ensure, payment_method_ensure
from .stripe_mirror import first_item
from .stripe_sync import plan_sync_to_stripe

logger = logging.getLogger(__name__)


def stripe_subscribe(sub: Subscription, plan: Plan, tenant: Tenant) -> dict[str, Any]:
    api = stripe_api()
    plan = plan_sync_to_stripe(plan=plan)
    customer_id = customer_ensure(api, sub, tenant)
    payment_method_ensure(api, customer_id)
    current: dict[str, Any] = {}
    if sub.stripe_subscription_id:
        current = as_dict(api.Subscription.retrieve(sub.stripe_subscription_id))
    metadata = {"tenant_id": tenant.id, "plan_id": plan.id}
    if current and current.get("status") not in ("canceled", "incomplete_expired"):
        updated = api.Subscription.modify(
            current["id"],
            items=[{"id": first_item(current)["id"], "plan": plan.stripe_plan_id}],
            proration_behavior="create_prorations",
            metadata=metadata,
        )
    else:
        updated = api.Subscription.create(
            customer=customer_id,
            items=[{"plan": plan.stripe_plan_id}],
            proration_behavior="create_prorations",
            # A declined first payment fails the call (402) instead of leaving an
            # `incomplete` subscription behind.
            payment_behavior="error_if_incomplete",
            metadata=metadata,
            # Same tenant, plan and row state = the same attempt: a retry cannot subscribe
            # twice. A declined attempt moves the row on (``subscription_change``), or Stripe
            # would replay the decline to the next attempt, made with a new card, for 24 h.
            idempotency_key=f"subscribe-{tenant.id}-{plan.id}-{sub.updated_at.timestamp():.6f}",
        )
    result = as_dict(api.Subscription.retrieve(updated.id, expand=["latest_invoice"]))
    if not current and result.get("status") == "incomplete":
        # The first payment did not go through (declined, or it needs an action nobody is
        # there to take). Stripe answers 402 itself under error_if_incomplete; an emulator
        # or a slow charge can still leave this: undo it and say so the same way. Its
        # invoice is voided: left open, it would ask to be paid for nothing (and an open
        # invoice keeps the tenant off paid plans).
        api.Subscription.cancel(result["id"])
        latest = result.get("latest_invoice")
        invoice_id = latest.get("id") if isinstance(latest, dict) else latest
        if invoice_id:
            try:
                api.Invoice.void_invoice(invoice_id)
            except stripe.StripeError as exc:  # (paid or voided meanwhile)
                logger.warning("could not void %s after a declined payment: %s", invoice_id, exc)
            else:
                _requeue_swept_items(api, tenant, customer_id, invoice_id)
        raise PaymentRequired(
            messages.PAYMENT_DECLINED.format(reason="the first payment did not complete"),
            code="card_declined",
        )
    return result


def _requeue_swept_items(api: Any, tenant: Tenant, customer_id: str, invoice_id: str) -> None:
    """Put back, pending on the customer, the invoice items a voided first invoice took: a
    new subscription's first invoice sweeps up the customer's pending items (usage that
    reached the ledger after an earlier subscription's final invoice, credits), and voiding
    it after a declined payment voided them too: served, pushed, never billed (an audit).
    Each comes back as a new item, and the push that sent it is pointed at it."""
    for line in api.Invoice.list_lines(invoice_id, limit=100).auto_paging_iter():
        line = as_dict(line)
        if not (old := _swept_item(line)):
            continue
        metadata = dict(line.get("metadata") or {})
        item = api.InvoiceItem.create(
            customer=customer_id,
            amount=line["amount"],
            currency=line["currency"],
            description=line.get("description") or "",
            metadata=metadata,
            idempotency_key=f"requeue-{old}-{invoice_id}",
        )
        UsageChargePush.objects.for_tenant(tenant).filter(stripe_invoice_item_id=old).update(
            stripe_invoice_item_id=item.id, awaiting_invoice=True
        )
        logger.info("item %s of voided invoice %s pending again as %s", old, invoice_id, item.id)


def _swept_item(line: dict[str, Any]) -> str | None:
    """The invoice item a line was made from, if it was made from one: the line's own
    ``invoice_item`` in the API versions before 2025-03 (and the emulator's), its parent's
    ``invoice_item_details`` in the version the stripe library pins now."""
    parent = line.get("parent") or {}
    if parent.get("type") == "invoice_item_details":
        return (parent.get("invoice_item_details") or {}).get("invoice_item") or None
    return line.get("invoice_item") or None if line.get("type") == "invoiceitem" else None
