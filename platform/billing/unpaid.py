"""Unpaid accounts: past due outlives the subscription it came from, until nothing is owed."""

from __future__ import annotations

from django.db import transaction
from django.db.models import F

from apikeys.generations import tenant_context_changed

from .models import Invoice, Subscription


def past_due_clear(*, tenant_id: str) -> None:
    """A tenant that left a subscription with an invoice unpaid stays past due on free (its
    calls refused after the grace period, no paid plan): it had escaped its debt by moving
    to free and back. Clear once no invoice of its is open with an amount due (paid,
    voided or written off)."""
    # NOTE: unscoped on purpose: a webhook has no tenant context; the id is its customer's.
    # (Only a past-due row without a subscription is locked: the daily run asks for every
    # tenant that ever had a Stripe customer.)
    with transaction.atomic():
        row = (
            Subscription.objects.unscoped()
            .select_for_update()
            .filter(tenant_id=tenant_id, status=Subscription.Status.PAST_DUE)
            .filter(stripe_subscription_id="")
            .first()
        )
        if row is None:
            return
        owed = Invoice.objects.unscoped().filter(
            tenant_id=tenant_id, status="open", amount_due__gt=F("amount_paid")
        )
        if owed.exists():
            return
        row.status, row.past_due_since = Subscription.Status.ACTIVE, None
        row.save(update_fields=["status", "past_due_since", "updated_at"])
    tenant_context_changed(tenant_id=tenant_id)
