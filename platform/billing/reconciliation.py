"""Ledger against Stripe, per tenant and period: what the rating engine says the usage is
worth against the usage invoice items Stripe holds for that period (pending, or already on
an invoice). A difference is recorded, logged and counted, and never corrected here: a
person decides what went wrong."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from django.utils import timezone
from prometheus_client import Counter

from tenants.models import Tenant

from .models import Reconciliation, UsageChargePush
from .periods import period_recorded
from .rating import rate_tenant_period
from .stripe_client import as_dict, stripe_api, subscription_of
from .subscriptions import subscription_get_or_create

logger = logging.getLogger(__name__)

RECONCILIATION_MISMATCHES = Counter(
    "billing_reconciliation_mismatches_total",
    "Tenant periods whose rated ledger usage differs from what Stripe holds.",
)
ROLLUP_DRIFT = Counter(
    "usage_rollup_drift_total",
    "Tenant periods whose daily rollups (what /v1/usage and the upcoming invoice read) rate"
    " to another amount than the ledger: run manage.py rebuild_rollups.",
)


def _ours_for_period(item: dict[str, Any], tenant: Tenant, start: datetime) -> bool:
    metadata = item.get("metadata") or {}
    return metadata.get("tenant_id") == tenant.id and metadata.get("period_start") == str(
        int(start.timestamp())
    )


def stripe_usage_total(
    *, tenant: Tenant, customer_id: str, start: datetime, subscription_id: str = ""
) -> int:
    """Usage items of the period in Stripe: still pending, plus lines of its invoices, drafts
    included (at a renewal Stripe attaches the pending items to a draft it finalises about an
    hour later: in that hour they are on neither list otherwise).

    A pending item counts where an invoice will take it: one on a subscription (its next
    invoice, or the final one its cancel made), one on the customer alone while the
    customer has a live subscription (``subscription_id``), whose next invoice takes it,
    and late usage of an ended subscription whose invoice of its own is still being asked
    for (``awaiting_invoice``). A credit left on a customer whose subscription has ended
    waits for an invoice that comes only if the tenant subscribes again: it is not counted,
    and reads as the difference it is (counted, a customer charged for voided usage
    reconciled as agreed)."""
    api = stripe_api()
    awaiting = set(
        UsageChargePush.objects.for_tenant(tenant)
        .filter(period_start=start, awaiting_invoice=True)
        .values_list("stripe_invoice_item_id", flat=True)
    )
    total = 0
    for item in api.InvoiceItem.list(customer=customer_id, limit=100).auto_paging_iter():
        data = as_dict(item)
        if data.get("invoice") or not _ours_for_period(data, tenant, start):
            continue
        if subscription_of(data) or subscription_id or data.get("id") in awaiting:
            total += int(data.get("amount") or 0)
    for invoice in api.Invoice.list(customer=customer_id, limit=100).auto_paging_iter():
        data = as_dict(invoice)
        if data.get("status") == "void":
            continue  # cancelled: what it held is not owed
        for line in _invoice_lines(api, data):
            if _ours_for_period(line, tenant, start):
                total += int(line.get("amount") or 0)
    return total


def _invoice_lines(api: Any, invoice: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every line of an invoice. An invoice as listed embeds only the first page of its
    lines (10 at Stripe), and usage growth is pushed as a new item each hour it grows, so
    the rest are paged from the invoice's own lines list when there are more."""
    embedded = invoice.get("lines")
    if isinstance(embedded, dict) and not embedded.get("has_more"):
        yield from embedded.get("data") or []
        return
    # NOTE: limit=100 is Stripe's largest page; the emulator (localstripe 1.15) cannot page
    # an invoice's lines beyond one page (it refuses starting_after there), Stripe can.
    for line in api.Invoice.list_lines(invoice["id"], limit=100).auto_paging_iter():
        yield as_dict(line)


def _pushed_for(tenant: Tenant, start: datetime) -> bool:
    return UsageChargePush.objects.for_tenant(tenant).filter(period_start=start).exists()


def _rollups_check(tenant: Tenant, plan: Any, start: datetime, cut: datetime, ledger: int) -> None:
    """Say so when the rollups the reports read (whole days: ``metering.sums``) rate the
    period to another amount than the ledger: customers' usage reports and upcoming invoice
    then show what Stripe is not sent."""
    read = rate_tenant_period(tenant=tenant, plan=plan, start=start, end=cut,
                              include_base_fee=False).usage_total  # fmt: skip
    if read != ledger:
        ROLLUP_DRIFT.inc()
        logger.warning(
            "usage rollups of tenant %s rate period %s to %s, the ledger to %s: run"
            " manage.py rebuild_rollups", tenant.id, start.isoformat(), read, ledger,
        )  # fmt: skip


def reconciliation_run(
    *, tenant: Tenant, start: datetime | None = None, until: datetime | None = None
) -> Reconciliation | None:
    """Compare the period (default: the current one) up to ``until`` — the same cut the
    last usage push used, so that usage recorded since does not read as a difference."""
    sub = subscription_get_or_create(tenant=tenant)
    if not sub.stripe_customer_id:
        return None
    start = start or sub.current_period_start
    # Never past the period's end, whatever ``until`` says: the push stops there too (it
    # rates up to min(end, until)), so with a renewal whose webhook is late, the new period's
    # usage is in neither and does not read as a difference.
    end, plan = period_recorded(tenant=tenant, sub=sub, start=start)
    cut = min(until or timezone.now(), end)
    # From the ledger itself (DESIGN: reported to Stripe = the sum of the ledger), as the
    # pushes rate it.
    rated = rate_tenant_period(tenant=tenant, plan=plan, start=start, end=cut,
                               include_base_fee=False, from_ledger=True)  # fmt: skip
    _rollups_check(tenant, plan, start, cut, rated.usage_total)
    if not plan.base_fee and not rated.usage_total and not _pushed_for(tenant, start):
        # A period on free with nothing a paid plan admitted and nothing pushed: nothing
        # to check, and no reason to page through an ex-customer's Stripe items every day.
        return None
    in_stripe = stripe_usage_total(
        tenant=tenant, customer_id=sub.stripe_customer_id, start=start,
        subscription_id=sub.stripe_subscription_id,
    )  # fmt: skip
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
