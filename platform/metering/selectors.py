"""Reading the usage ledger for customers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import Count, F, Sum
from django.db.models.functions import TruncDate

from billing.usage_pricing import allocate, line_key, range_charges
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


def _row_amounts(grouped: Any, key: str, charges: dict[str, int]) -> dict[str, int]:
    """Each report row's share of the range's charges (see billing.usage_pricing)."""
    weights: dict[str, dict[str, int]] = {}
    for row in grouped.values("kind", "model", group=F(key)).annotate(
        inputs=Sum("inputs"), tokens=Sum("tokens")
    ):
        line = line_key(row["kind"], row["model"])
        quantity = row["tokens"] if line == "finetune" else row["inputs"]
        by_group = weights.setdefault(line, {})
        by_group[str(row["group"])] = by_group.get(str(row["group"]), 0) + (quantity or 0)
    amounts: dict[str, int] = {}
    for line, by_group in weights.items():
        for group, part in allocate(charges.get(line, 0), by_group).items():
            amounts[group] = amounts.get(group, 0) + part
    return amounts


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
    free)."""
    records = UsageRecord.objects.for_tenant(tenant).filter(
        livemode=livemode, occurred_at__gte=start, occurred_at__lt=end
    )
    sums = {
        "requests": Count("id"),
        "inputs": Sum("inputs"),
        "tokens": Sum("tokens"),
        "compute_ms": Sum("compute_ms"),
    }
    key = GROUP_FIELDS[group_by]
    grouped = records.annotate(day=TruncDate("occurred_at")) if group_by == "day" else records
    charges = (
        dict(range_charges(tenant=tenant, plan=plan, start=start, end=end)) if livemode else {}
    )
    amounts = _row_amounts(grouped, key, charges)
    currency = plan.currency
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
