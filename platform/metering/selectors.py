"""Reading the usage ledger for customers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from billing.periods import billed_currency
from billing.usage_pricing import range_charges, range_row_charges
from plans.models import Plan
from tenants.models import Tenant

from .models import UsageRecord
from .sums import SUMS, usage_sums

GROUP_FIELDS = {"day": "day", "model": "model", "api_key": "api_key_id"}
# A fine-tune's usage, apart from the classifications' (``_by_kind``).
TRAINING = ("fine_tunes", "trained_tokens")


def _metrics(row: dict[str, Any], amount: int, currency: str) -> dict[str, Any]:
    return {
        "requests": row["requests"],
        "inputs": row["inputs"],
        "cached": row["cached"],
        "tokens": row["tokens"],
        "compute_ms": round(row["compute_ms"], 3),
        "fine_tunes": row["fine_tunes"],
        "trained_tokens": row["trained_tokens"],
        "amount": amount,
        "currency": currency,
    }


def _by_kind(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Rows summed by ``key`` and kind, folded into one per ``key``: the classifications'
    sums as they are, a fine-tune's as ``fine_tunes`` (jobs) and ``trained_tokens``. NOTE:
    a job's training examples and tokens were summed with the classifications' inputs and
    tokens, and the job counted as a request: a tenant's inputs read as more than its plan's
    allowance counts (an audit; the quota counts classifications only)."""
    folded: dict[Any, dict[str, Any]] = {}
    for row in rows:
        into = folded.setdefault(row[key], {key: row[key], **dict.fromkeys((*SUMS, *TRAINING), 0)})
        if row["kind"] == UsageRecord.Kind.FINE_TUNE:
            into["fine_tunes"] += row["requests"]
            into["trained_tokens"] += row["tokens"]
        else:
            for name in SUMS:
                into[name] += row[name]
    return list(folded.values())


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
    free): classifications' and fine-tunes' apart, their money together. Net of ledger
    corrections (``metering.corrections``): a voided call's inputs, tokens and amount are
    gone; it still counts as a request, and its compute was spent. Whole days from the
    rollups where the grouping allows (``sums``)."""
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
    by_kind = usage_sums(tenant=tenant, livemode=livemode, start=start, end=end, by=(key, "kind"))
    rows = sorted(_by_kind(by_kind, key), key=lambda row: row[key])
    data = [
        {group_by: str(row[key]), **_metrics(row, amounts.get(str(row[key]), 0), currency)}
        for row in rows
    ]
    # (the rows' sums: the total of the same usage, read once)
    total = {name: sum(row[name] for row in rows) for name in (*SUMS, *TRAINING)}
    return {
        "object": "usage",
        "start": start,
        "end": end,
        "group_by": group_by,
        "currency": currency,
        "data": data,
        "total": _metrics(total, sum(charges.values()), currency),
    }
