"""Money on usage reports: what a range of the ledger costs under the tenant's plan.

A range is priced per billing period (``billing.periods``: the subscription's periods as
they were, else calendar months) as the marginal charge it adds to its period (rated up
to its end minus rated up to its start), so included inputs and graduated tiers are
honoured exactly as the invoice does; each charge line is then shared among the report's
rows by their share of that line's quantity, with the rounding remainder placed so that
the rows add up to the total to the minor unit."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from typing import TypeVar

from django.db.models import Max, Min

from metering.models import UsageRecord
from plans.models import Plan
from tenants.models import Tenant

from .periods import billing_periods
from .rating import model_tier, rate_tenant_period


def range_charges(*, tenant: Tenant, plan: Plan, start: datetime, end: datetime) -> Counter[str]:
    """Charge line key → minor units that [start, end) adds (base fee excluded)."""
    charges: Counter[str] = Counter()
    # NOTE: a month without live usage in the range adds nothing, so only the months from
    # the range's first live row to its last are rated: the work follows the ledger, not
    # the width of the range (a client may ask for years 0001 to 9999).
    span = (
        UsageRecord.objects.for_tenant(tenant)
        .filter(livemode=True, occurred_at__gte=start, occurred_at__lt=end)
        .aggregate(first=Min("occurred_at"), last=Max("occurred_at"))
    )
    if span["first"] is None:
        return charges
    for period_start, period_end in billing_periods(tenant=tenant, start=span["first"], end=end):
        if period_start > span["last"]:
            break
        lo, hi = max(start, period_start), min(end, period_end)
        for line in rate_tenant_period(
            tenant=tenant, plan=plan, start=period_start, end=hi, include_base_fee=False
        ).lines:
            charges[line.key] += line.amount
        if lo > period_start:
            for line in rate_tenant_period(
                tenant=tenant, plan=plan, start=period_start, end=lo, include_base_fee=False
            ).lines:
                charges[line.key] -= line.amount
    return charges


K = TypeVar("K")


def allocate(total: int, weights: Mapping[K, int]) -> dict[K, int]:
    """Split ``total`` by ``weights`` in whole units (largest remainder): the parts always
    add up to ``total``."""
    weight_sum = sum(weights.values())
    if not weight_sum or not total:
        return dict.fromkeys(weights, 0)
    exact = {k: total * w / weight_sum for k, w in weights.items()}
    parts = {k: int(v) for k, v in exact.items()}
    short = total - sum(parts.values())
    for k in sorted(exact, key=lambda k: exact[k] - parts[k], reverse=True)[:short]:
        parts[k] += 1
    return parts


def line_key(kind: str, model: str) -> str:
    return f"usage:{model_tier(model)}" if kind == "inference" else "finetune"
