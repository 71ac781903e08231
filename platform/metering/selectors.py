"""Reading the usage ledger for customers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from billing.periods import billed_currency
from billing.usage_pricing import range_charges, range_row_charges
from plans.models import Plan
from tenants.models import Tenant

from .sums import SUMS, usage_sums

GROUP_FIELDS = {"day": "day", "model": "model", "api_key": "api_key_id"}


def _metrics(row: dict[str, Any], amount: int, currency: str) -> dict[str, Any]:
    return {
        "requests": row["requests"],
        "inputs": row["inputs"],
        "cached": row["cached"],
        "tokens": row["tokens"],
        "compute_ms": round(row["compute_ms"], 3),
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
    tokens and amount are gone; it still counts as a request, and its compute was spent.
    Whole days from the rollups where the grouping allows (``sums``)."""
    key = GROUP_FIELDS[group_by]
    charges: dict[str, int] = {}
    amounts: dict[str, int] = {}
    if livemode:
        charges = dict(range_charges(tenant=tenant, plan=plan, start=start, end=end))
        # Each row's money is what its own usage adds in its own billing periods (a day's
        # marginal charge; a model's or key's share of each period's charge), never a share
        # of a period it has no usage in.
        by_row = range_row_charges(
            tenant=tenant, plan=plan, start=start, end=end, group=key,
            in_time_order=group_by == "day",
        )  # fmt: skip
        amounts = {str(group): amount for group, amount in by_row.items()}
    # The currency its charges were made in: the plan's own, unless the tenant was billed
    # in another before (now on free, whose prices are in USD, with EUR periods in range).
    currency = billed_currency(tenant=tenant) or plan.currency
    rows = usage_sums(tenant=tenant, livemode=livemode, start=start, end=end, by=(key,))
    rows.sort(key=lambda row: row[key])
    data = [
        {group_by: str(row[key]), **_metrics(row, amounts.get(str(row[key]), 0), currency)}
        for row in rows
    ]
    # (the rows' sums: the total of the same usage, read once)
    total = {name: sum(row[name] for row in rows) for name in SUMS}
    return {
        "object": "usage",
        "start": start,
        "end": end,
        "group_by": group_by,
        "currency": currency,
        "data": data,
        "total": _metrics(total, sum(charges.values()), currency),
    }
