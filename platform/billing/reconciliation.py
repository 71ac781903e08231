"""Ledger against Stripe, per tenant and period: what the rating engine says the usage is
worth against the usage invoice items Stripe holds for that period (pending, or already on
an invoice). A difference is recorded, logged and counted, and never corrected here: a
person decides what went wrong."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django.utils import timezone
from prometheus_client import Counter

from tenants.models import Tenant

from .models import Reconciliation
from .rating import rate_tenant_period
from .stripe_client import as_dict, stripe_api
from .subscriptions import subscription_get_or_create

logger = logging.getLogger(__name__)

RECONCILIATION_MISMATCHES = Counter(
    "billing_reconciliation_mismatches_total",
    "Tenant periods whose rated ledger usage differs from what Stripe holds.",
)


def _ours_for_period(item: dict[str, Any], tenant: Tenant, start: datetime) -> bool:
    metadata = item.get("metadata") or {}
    return metadata.get("tenant_id") == tenant.id and metadata.get("period_start") == str(
        int(start.timestamp())
    )


def stripe_usage_total(*, tenant: Tenant, customer_id: str, start: datetime) -> int:
    """Usage items of the period in Stripe: still pending, plus lines of its invoices."""
    api = stripe_api()
    total = 0
    for item in api.InvoiceItem.list(customer=customer_id, limit=100).auto_paging_iter():
        data = as_dict(item)
        if not data.get("invoice") and _ours_for_period(data, tenant, start):
            total += int(data.get("amount") or 0)
    for invoice in api.Invoice.list(customer=customer_id, limit=100).auto_paging_iter():
        data = as_dict(invoice)
        if data.get("status") in ("draft", "void"):
            continue  # a draft is not billed yet (its items are counted as pending above)
        for line in (data.get("lines") or {}).get("data") or []:
            if _ours_for_period(line, tenant, start):
                total += int(line.get("amount") or 0)
    return total


def reconciliation_run(
    *, tenant: Tenant, start: datetime | None = None, until: datetime | None = None
) -> Reconciliation | None:
    """Compare the period (default: the current one) up to ``until`` — the same cut the
    last usage push used, so that usage recorded since does not read as a difference."""
    sub = subscription_get_or_create(tenant=tenant)
    if not sub.stripe_customer_id:
        return None
    start = start or sub.current_period_start
    cut = until or min(sub.current_period_end, timezone.now())
    rated = rate_tenant_period(
        tenant=tenant, plan=sub.plan, start=start, end=cut, include_base_fee=False
    )
    in_stripe = stripe_usage_total(tenant=tenant, customer_id=sub.stripe_customer_id, start=start)
    row = Reconciliation.objects.create(
        tenant=tenant,
        period_start=start,
        period_end=cut,
        ledger_amount=rated.usage_total,
        stripe_amount=in_stripe,
        difference=rated.usage_total - in_stripe,
    )
    if row.difference:
        RECONCILIATION_MISMATCHES.inc()
        logger.warning(
            "billing reconciliation: tenant %s period %s ledger %s, Stripe %s (difference %s)",
            tenant.id, start.isoformat(), rated.usage_total, in_stripe, row.difference,
        )  # fmt: skip
    return row
