"""Reading the usage ledger for customers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import Count, F, Q, Sum
from django.db.models.functions import TruncDate

from billing.periods import billed_currency
from billing.usage_pricing import range_charges, range_row_charges
from plans.models import Plan
from tenants.models import Tenant

from .models import UsageRecord

GROUP_FIELDS = {"day": "day", "model": "model", "api_key": "api_key_id"}


def _metrics(row: dict[str, Any], amount: int, currency: str) -> dict[str, Any]:
    return {
        "requests": row["requests"] or 0,
        "inputs": row["inputs"] or 0,
        "tokens": row["tokens"] or 0,
        "compute_ms": round(row["compute_ms"] or 0.0, 3),
        "amount": amount,
        "currency": currency,
    }


def usage_summary(
    *,
    tenant: Tenant,
    plan: Plan,
    livemode: bool,
    start: datetime,
    end: datetime,
    group_by: str,
) -> dict[str, Any]:
    """Usage of [start, end), grouped, with money at the plan's prices (test-mode usage is
    free). Net of ledger corrections (``metering.corrections``): a voided call's inputs,
    tokens and amount are gone; it still counts as a request, and its compute was spent."""
    records = UsageRecord.objects.for_tenant(tenant).filter(
        livemode=livemode, occurred_at__gte=start, occurred_at__lt=end
    )
    sums = {
        # Calls made: a voided call was made all the same; its correcting row is not a call.
        "requests": Count("id", filter=Q(corrects="")),
        "inputs": Sum("inputs"),
        "tokens": Sum("tokens"),
        "compute_ms": Sum("compute_ms"),
    }
    key = GROUP_FIELDS[group_by]
    grouped = records.annotate(day=TruncDate("occurred_at")) if group_by == "day" else records
    charges: dict[str, int] = {}
    amounts: dict[str, int] = {}
    if livemode:
        charges = dict(range_charges(tenant=tenant, plan=plan, start=start, end=end))
        # Each row's money is what its own usage adds in its own billing periods (a day's
        # marginal charge; a model's or key's share of each period's charge), never a share
        # of a period it has no usage in.
        by_row = range_row_charges(
            tenant=tenant,
            plan=plan,
            start=start,
            end=end,
            group=TruncDate("occurred_at") if group_by == "day" else key,
            in_time_order=group_by == "day",
        )
        amounts = {str(group): amount for group, amount in by_row.items()}
    # The currency its charges were made in: the plan's own, unless the tenant was billed
    # in another before (now on free, whose prices are in USD, with EUR periods in range).
    currency = billed_currency(tenant=tenant) or plan.currency
    rows = grouped.values(group=F(key)).annotate(**sums).order_by("group")
    data = [
        {group_by: str(row["group"]), **_metrics(row, amounts.get(str(row["group"]), 0), currency)}
        for row in rows
    ]
    return {
        "object": "usage",
        "start": start,
        "end": end,
        "group_by": group_by,
        "currency": currency,
        "data": data,
        "total": _metrics(records.aggregate(**sums), sum(charges.values()), currency),
    }
