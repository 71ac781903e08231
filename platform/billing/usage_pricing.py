"""Money on usage reports: what a range of the ledger costs under the tenant's plan.

A range is priced per billing period (``billing.periods``: the subscription's periods as
they were, else calendar months) as the marginal charge it adds to its period (rated up
to its end minus rated up to its start), so included inputs and graduated tiers are
honoured exactly as the invoice does.

A report's rows get the charges their own usage causes in their own period, never a share
of another period's (``range_row_charges``): a row that is a stretch of time (a day) gets
its marginal charge in each period it touches, which is what a report of that stretch
alone says; a row that spans the range (a model, an API key) gets, in each period, plan
segment and charge line, a share of that charge by its share of the billable quantity
there. Either way the rows add up to the range's charge to the minor unit."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from django.db.models import Max, Min

from metering.models import UsageRecord
from metering.sums import usage_sums
from plans.models import Plan
from tenants.models import Tenant

from .periods import billing_periods, plan_shares
from .rating import PlanUsage, model_tier, pooled, rate_tenant_period, rate_usage


def range_charges(*, tenant: Tenant, plan: Plan, start: datetime, end: datetime) -> Counter[str]:
    """Charge line key → minor units that [start, end) adds (base fee excluded)."""
    charges: Counter[str] = Counter()
    for period_start, _, lo, hi in _periods_with_usage(tenant, start, end):
        shares = plan_shares(tenant=tenant, start=period_start)
        for line in rate_tenant_period(
            tenant=tenant, plan=plan, start=period_start, end=hi, include_base_fee=False,
            shares=shares,
        ).lines:  # fmt: skip
            charges[line.key] += line.amount
        if lo > period_start:
            for line in rate_tenant_period(
                tenant=tenant, plan=plan, start=period_start, end=lo, include_base_fee=False,
                shares=shares,
            ).lines:  # fmt: skip
                charges[line.key] -= line.amount
    return charges


K = TypeVar("K")


def _periods_with_usage(
    tenant: Tenant, start: datetime, end: datetime
) -> Iterator[tuple[datetime, datetime, datetime, datetime]]:
    """(period start, period end, and the part of [start, end) inside it) for each billing
    period that [start, end) has live usage in.

    NOTE: a period without live usage in the range adds nothing, so only the periods from
    the range's first live row to its last are visited: the work follows the ledger, not
    the width of the range (a client may ask for years 0001 to 9999)."""
    span = (
        UsageRecord.objects.for_tenant(tenant)
        .filter(livemode=True, occurred_at__gte=start, occurred_at__lt=end)
        .aggregate(first=Min("occurred_at"), last=Max("occurred_at"))
    )
    if span["first"] is None:
        return
    for period_start, period_end in billing_periods(tenant=tenant, start=span["first"], end=end):
        if period_start > span["last"]:
            return
        yield period_start, period_end, max(start, period_start), min(end, period_end)


def allocate(total: int, weights: Mapping[K, int]) -> dict[K, int]:
    """Split ``total`` by ``weights`` in whole units (largest remainder): the parts always
    add up to ``total``."""
    weight_sum = sum(weights.values())
    if not weight_sum or not total:
        return dict.fromkeys(weights, 0)
    # Integer arithmetic throughout: a float quotient near a whole number can round up and
    # hand out one unit too many.
    parts: dict[K, int] = {}
    remainders: dict[K, int] = {}
    for k, w in weights.items():
        parts[k], remainders[k] = divmod(total * w, weight_sum)
    short = total - sum(parts.values())
    for k in sorted(remainders, key=remainders.__getitem__, reverse=True)[:short]:
        parts[k] += 1
    return parts


def line_key(kind: str, model: str) -> str:
    return f"usage:{model_tier(model)}" if kind == "inference" else "finetune"


# A ledger row's billing identity: (plan id as recorded, kind, model). Sums are kept per
# key, as ``rating.billable_usage`` groups them, so the rows' charges add up to exactly
# what ``range_charges`` (and the invoice) says.
Key = tuple[str, str, str]


@dataclass
class _Sums:
    inputs: int = 0
    cached: int = 0
    tokens: int = 0

    def add(self, other: _Sums) -> None:
        self.inputs += other.inputs
        self.cached += other.cached
        self.tokens += other.tokens


Rows = list[tuple[Any, Key, _Sums]]  # (report row, key, usage)


def _ledger_sums(tenant: Tenant, lo: datetime, hi: datetime, group: str | None = None) -> Rows:
    """Live usage in [lo, hi) summed by (``group`` if any: a name of ``metering.sums.GROUPS``,
    plan id, kind, model)."""
    by = ("plan_id", "kind", "model")
    rows = usage_sums(
        tenant=tenant, livemode=True, start=lo, end=hi, by=(group, *by) if group else by
    )
    return [
        (
            row[group] if group else None,
            (row["plan_id"] or "", row["kind"], row["model"]),
            _Sums(row["inputs"], row["cached"], row["tokens"]),
        )
        for row in rows
    ]


class _Pricing:
    """Rates usage as ``rating.rate_tenant_period`` does: each key under the plan it was
    made on (``plan``, the tenant's plan now, for rows from before plans were recorded)."""

    def __init__(self, plan: Plan, keys: Iterable[Key], start: datetime, tenant: Tenant) -> None:
        self.plan = plan
        self.shares = plan_shares(tenant=tenant, start=start)
        plan_ids = {plan_id for plan_id, _, _ in keys if plan_id} - {plan.pk}
        plan_ids |= set(self.shares) - {plan.pk}  # (time in the period, maybe no usage)
        self.plans: dict[str, Plan] = {plan.pk: plan, "": plan, **Plan.objects.in_bulk(plan_ids)}
        self.allowance = pooled(self.shares, self.plans.__getitem__)

    def made_on(self, key: Key) -> Plan:
        return self.plans.get(key[0], self.plan)  # a plan row is never deleted

    def billable(self, key: Key, sums: _Sums) -> tuple[str, int]:
        """The charge line a key's usage falls in, and its billable quantity."""
        _, kind, model = key
        if kind != UsageRecord.Kind.INFERENCE:
            return "finetune", sums.tokens
        count = sums.inputs
        if not self.made_on(key).cached_results_billed:
            count -= sums.cached
        return line_key(kind, model), max(count, 0)

    def charges(self, usage: Mapping[Key, _Sums]) -> dict[Plan, Counter[str]]:
        """Plan segment → charge line → minor units for this much usage in one period."""
        segments: dict[Plan, PlanUsage] = {}
        for key, sums in usage.items():
            segments.setdefault(self.made_on(key), PlanUsage()).add(*self.billable(key, sums))
        return {
            made_on: Counter({line.key: line.amount for line in lines})
            for made_on, lines in rate_usage(segments, self.allowance).items()
        }


def _added(after: Mapping[Plan, Counter[str]], before: Mapping[Plan, Counter[str]]) -> int:
    return sum(sum(lines.values()) for lines in after.values()) - sum(
        sum(lines.values()) for lines in before.values()
    )


def range_row_charges(
    *,
    tenant: Tenant,
    plan: Plan,
    start: datetime,
    end: datetime,
    group: str,
    in_time_order: bool,
) -> dict[Any, int]:
    """Minor units each report row of [start, end) adds to its billing periods (base fee
    excluded), the rows being the values of ``group`` (a name of ``metering.sums.GROUPS``).
    Rows ``in_time_order`` (consecutive stretches of time, such as days) each get their
    marginal charge in each period: rated up to the row's end minus rated up to its start.
    Other rows (models, API keys) share each (period, plan segment, charge line)
    charge by their billable quantity in it. The rows add up to ``range_charges``."""
    amounts: dict[Any, int] = {}
    share = _marginal if in_time_order else _proportional
    for period_start, _, lo, hi in _periods_with_usage(tenant, start, end):
        rows = _ledger_sums(tenant, lo, hi, group)
        if not rows:
            continue
        before: dict[Key, _Sums] = {}
        if lo > period_start:
            for _, key, sums in _ledger_sums(tenant, period_start, lo):
                before.setdefault(key, _Sums()).add(sums)
        keys = [key for _, key, _ in rows] + list(before)
        pricing = _Pricing(plan, keys, period_start, tenant)
        for row_group, amount in share(pricing, before, rows).items():
            amounts[row_group] = amounts.get(row_group, 0) + amount
    return amounts


def _marginal(pricing: _Pricing, before: dict[Key, _Sums], rows: Rows) -> dict[Any, int]:
    """Each row's marginal charge, rows taken in order, from the usage before them."""
    by_row: dict[Any, dict[Key, _Sums]] = {}
    for row_group, key, sums in rows:
        by_row.setdefault(row_group, {}).setdefault(key, _Sums()).add(sums)
    usage = {key: _Sums(s.inputs, s.cached, s.tokens) for key, s in before.items()}
    charged = pricing.charges(usage)
    amounts: dict[Any, int] = {}
    for row_group in sorted(by_row):
        for key, sums in by_row[row_group].items():
            usage.setdefault(key, _Sums()).add(sums)
        now = pricing.charges(usage)
        amounts[row_group] = _added(now, charged)
        charged = now
    return amounts


def _proportional(pricing: _Pricing, before: dict[Key, _Sums], rows: Rows) -> dict[Any, int]:
    """The rows' charge in the period, each (plan segment, line) part shared among the
    rows by their billable quantity in that segment and line. A line can grow with no
    quantity of its own in the range (standard inputs taking over included inputs that
    covered int8 ones, or another plan's): that part goes by the rows' billable inputs in
    the segment, or, with none there, in the period."""
    usage = {key: _Sums(s.inputs, s.cached, s.tokens) for key, s in before.items()}
    weights: dict[Plan, dict[str, dict[Any, int]]] = {}
    for row_group, key, sums in rows:
        usage.setdefault(key, _Sums()).add(sums)
        line, quantity = pricing.billable(key, sums)
        by_line = weights.setdefault(pricing.made_on(key), {})
        by_line.setdefault(line, {})
        by_line[line][row_group] = by_line[line].get(row_group, 0) + quantity
    charged, now = pricing.charges(before), pricing.charges(usage)
    amounts: dict[Any, int] = dict.fromkeys((row_group for row_group, _, _ in rows), 0)
    every: dict[Any, int] = {}  # billable inputs in the period's usage, any plan or tier
    inputs: dict[Plan, dict[Any, int]] = {}  # the same in each segment
    for made_on, by_line in weights.items():
        for line, quantities in by_line.items():
            for row_group, quantity in quantities.items():
                if line != "finetune":
                    segment = inputs.setdefault(made_on, {})
                    segment[row_group] = segment.get(row_group, 0) + quantity
                    every[row_group] = every.get(row_group, 0) + quantity
    for made_on, lines in now.items():
        for line, amount in lines.items():
            added = amount - charged.get(made_on, Counter())[line]
            if not added:
                continue
            # Else by the rows' billable inputs in the segment, then in any segment (the
            # period's included inputs cover every plan's: rows on one plan taking them
            # grow another's line).
            for shares in (weights.get(made_on, {}).get(line, {}), inputs.get(made_on, {}), every):
                if sum(shares.values()):
                    break
            else:  # NOTE: cannot happen (no quantity, no charge)
                shares = dict.fromkeys(amounts, 1)
            for row_group, part in allocate(added, shares).items():
                amounts[row_group] += part
    return amounts
