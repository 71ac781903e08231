"""Revenue, cost and margin by tenant, model, plan or day, and the pricing simulator.

Everything reads the daily rollups, never the raw ledger. Revenue is what the rating engine
charges for each tenant-month (base fee prorated by the share of the month the range
covers, included inputs, graduated overage per tier, fine-tuning), shared among the month's
rollup rows by quantity: usage lines by inputs of their tier, fine-tuning by trained
tokens, the base fee by inputs. As in billing, usage is priced by the plan it was made on
(rollups keep it), each plan's included inputs covering its own usage; the base fee is the
plan the tenant-month ends on. The plan a tenant-month ends on comes from the billing
periods kept (``billing.BillingPeriod``) where there are any; its base fee is earned even
in a month without a call on it, reported then under model ``(base fee)`` and spread over
the days covered. Cost is the workers' compute time x their hourly price. Both are
reported in micro-units of the currency so that a margin per call is visible."""

from __future__ import annotations

import copy
from collections import defaultdict
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from billing.models import BillingPeriod
from billing.periods import months
from billing.rating import model_tier, rate
from billing.usage_pricing import allocate
from plans.models import MODEL_TIERS, Plan

from .models import UsageRollup

MICROS_PER_MINOR = 10_000  # two-decimal currencies: 1 cent = 10,000 micro-dollars
DIMENSIONS = ("tenant", "model", "plan", "day")
BASE_FEE = "(base fee)"  # the model a base fee without calls on its plan is reported under


def _month_rows(start: datetime, end: datetime) -> dict[tuple[str, date], list[UsageRollup]]:
    # Rollups are daily: a range covers the days it touches.
    last_day = end.date() if end.time() == datetime.min.time() else end.date() + timedelta(days=1)
    rows = UsageRollup.objects.unscoped().filter(
        livemode=True, day__gte=start.date(), day__lt=last_day
    )
    grouped: dict[tuple[str, date], list[UsageRollup]] = defaultdict(list)
    for row in rows.order_by("day"):
        grouped[(row.tenant_id, row.day.replace(day=1))].append(row)
    return grouped


def _revenue(
    rows: list[UsageRollup],
    plan: Plan,
    month: tuple[datetime, datetime],
    start: datetime,
    end: datetime,
    include_base_fee: bool = True,
) -> dict[int, int]:
    """Minor units of revenue per rollup row (by id) for one tenant-month's rows made on
    ``plan``."""
    inputs: dict[str, int] = dict.fromkeys(MODEL_TIERS, 0)
    tokens = 0
    for row in rows:
        if row.kind == "inference":
            billable = row.inputs - (0 if plan.cached_results_billed else row.cached)
            inputs[model_tier(row.model)] += max(billable, 0)
        else:
            tokens += row.tokens
    rated = rate(plan=plan, inputs_by_tier=inputs, trained_tokens=tokens,
                 period_start=month[0], period_end=month[1],
                 include_base_fee=include_base_fee)  # fmt: skip
    revenue: dict[int, int] = defaultdict(int)
    for line in rated.lines:
        amount = line.amount
        if line.key == "base_fee":
            amount = _prorated(amount, month, start, end)
            weights = {row.pk: row.inputs for row in rows}
        elif line.key == "finetune":
            weights = {row.pk: row.tokens for row in rows if row.kind != "inference"}
        else:
            tier = line.key.removeprefix("usage:")
            weights = {row.pk: row.inputs for row in rows
                       if row.kind == "inference" and model_tier(row.model) == tier}  # fmt: skip
        if not any(weights.values()):
            weights = {row.pk: 1 for row in rows}
        for pk, part in allocate(amount, weights).items():
            revenue[pk] += part
    return revenue


def _prorated(amount: int, month: tuple[datetime, datetime], start: datetime, end: datetime) -> int:
    """A month's base fee for the share of the month that [start, end) covers."""
    covered = (min(end, month[1]) - max(start, month[0])) / (month[1] - month[0])
    return int(Decimal(amount) * Decimal(covered))


def _plan_cache() -> Any:
    cache: dict[str, Plan] = {}

    def get(plan_id: str) -> Plan:
        if plan_id not in cache:
            cache[plan_id] = Plan.objects.get(pk=plan_id)
        return cache[plan_id]

    return get


def _rows_with_money(
    start: datetime, end: datetime, proposed: dict[str, dict[str, Any]] | None = None
) -> list[tuple[UsageRollup, int, Plan]]:
    """(rollup row, revenue in minor units, plan used) for every live row in the range;
    ``proposed`` overrides plan terms by plan slug (the simulator)."""
    plan_of = _plan_cache()
    out: list[tuple[UsageRollup, int, Plan]] = []
    month_bounds = {m[0].date(): m for m in months(start, end)}
    ends_on = _month_end_plans(start, end)
    for (tenant_id, month_start), month_rows in _month_rows(start, end).items():
        month = month_bounds[month_start]
        # The plan the month ends on pays its base fee: as its billing periods say, else the
        # plan of its last call.
        last = ends_on.get((tenant_id, month_start), month_rows[-1].plan_id)
        by_plan: dict[str, list[UsageRollup]] = defaultdict(list)
        for row in month_rows:
            by_plan[row.plan_id].append(row)
        for plan_id, rows in by_plan.items():
            plan = _proposed(plan_of(plan_id), proposed)
            revenue = _revenue(rows, plan, month, start, end, include_base_fee=plan_id == last)
            out += [(row, revenue[row.pk], plan) for row in rows]
        if last in by_plan:
            ends_on.pop((tenant_id, month_start), None)  # its fee is in its calls' revenue
        else:
            ends_on[(tenant_id, month_start)] = last  # no call on it: a fee of its own
    for (tenant_id, month_start), plan_id in ends_on.items():
        plan = _proposed(plan_of(plan_id), proposed)
        out += _base_fee_rows(tenant_id, plan, month_bounds[month_start], start, end)
    return out


def _proposed(plan: Plan, proposed: dict[str, dict[str, Any]] | None) -> Plan:
    if proposed and plan.slug in proposed:
        plan = copy.copy(plan)
        for name, value in proposed[plan.slug].items():
            setattr(plan, name, value)
    return plan


def _month_end_plans(start: datetime, end: datetime) -> dict[tuple[str, date], str]:
    """(tenant, month) -> the plan of the tenant's last billing period in that month, for the
    months [start, end) touches (tenants with periods recorded)."""
    ends_on: dict[tuple[str, date], str] = {}
    for month_start, month_end in months(start, end):
        periods = BillingPeriod.objects.unscoped().filter(start__lt=month_end, end__gt=month_start)
        for tenant_id, plan_id in periods.order_by("start").values_list("tenant_id", "plan_id"):
            ends_on[(tenant_id, month_start.date())] = plan_id
    return ends_on


def _base_fee_rows(
    tenant_id: str, plan: Plan, month: tuple[datetime, datetime], start: datetime, end: datetime
) -> list[tuple[UsageRollup, int, Plan]]:
    """The base fee of a tenant-month whose plan made no call in it, prorated as a month with
    calls is: one unsaved rollup row (model ``BASE_FEE``, no usage) per day of the range in
    the month."""
    if not plan.base_fee:
        return []
    lo, hi = max(start, month[0]), min(end, month[1])
    amount = _prorated(plan.base_fee, month, start, end)
    last = (hi - timedelta(microseconds=1)).date()
    days = [lo.date() + timedelta(days=n) for n in range((last - lo.date()).days + 1)]
    rows = []
    for day, part in allocate(amount, dict.fromkeys(days, 1)).items():
        row = UsageRollup(day=day, tenant_id=tenant_id, model=BASE_FEE, kind="base_fee",
                          livemode=True, plan_id=plan.id)  # fmt: skip
        rows.append((row, part, plan))
    return rows


def _key(row: UsageRollup, plan: Plan, by: str) -> str:
    return {"tenant": row.tenant_id, "model": row.model, "plan": plan.id,
            "day": row.day.isoformat()}[by]  # fmt: skip


def margins(*, start: datetime, end: datetime, by: str) -> list[dict[str, Any]]:
    """Revenue, cost and margin (micro-units) per ``by`` in [start, end), best first."""
    if by not in DIMENSIONS:
        raise ValueError(f"by must be one of {DIMENSIONS}")
    totals: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"requests": 0, "inputs": 0, "revenue_micros": 0, "cost_micros": Decimal(0)}
    )
    for row, revenue, plan in _rows_with_money(start, end):
        t = totals[_key(row, plan, by)]
        t["requests"] += row.requests
        t["inputs"] += row.inputs
        t["revenue_micros"] += revenue * MICROS_PER_MINOR
        t["cost_micros"] += Decimal(row.cost_micros)
    report = []
    for key, t in totals.items():
        margin = Decimal(t["revenue_micros"]) - t["cost_micros"]
        report.append({
            by: key, **t, "margin_micros": margin,
            "margin_pct": (margin / t["revenue_micros"] * 100) if t["revenue_micros"] else None,
            "cost_per_call_micros": t["cost_micros"] / t["requests"] if t["requests"] else None,
        })  # fmt: skip
    return sorted(report, key=lambda r: r["margin_micros"], reverse=True)


def pricing_simulate(
    *, start: datetime, end: datetime, proposed: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Replay [start, end) of the ledger under proposed plan terms (by plan slug: any Plan
    field, e.g. base_fee, included_inputs, overage_tiers) against what was actually rated.
    Per tenant and in total: revenue, cost and margin, actual and simulated."""
    tenants: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"actual_revenue_micros": 0, "simulated_revenue_micros": 0,
                 "cost_micros": Decimal(0), "plan": ""}
    )  # fmt: skip
    for row, revenue, plan in _rows_with_money(start, end):
        t = tenants[row.tenant_id]
        t["plan"] = plan.id
        t["actual_revenue_micros"] += revenue * MICROS_PER_MINOR
        t["cost_micros"] += Decimal(row.cost_micros)
    # (Not joined row by row: a proposed base fee can add months without calls, or drop them.)
    for row, revenue, _ in _rows_with_money(start, end, proposed):
        tenants[row.tenant_id]["simulated_revenue_micros"] += revenue * MICROS_PER_MINOR
    for t in tenants.values():
        t["actual_margin_micros"] = t["actual_revenue_micros"] - t["cost_micros"]
        t["simulated_margin_micros"] = t["simulated_revenue_micros"] - t["cost_micros"]
    total = {name: sum((t[name] for t in tenants.values()), Decimal(0)) for name in (
        "actual_revenue_micros", "simulated_revenue_micros", "cost_micros",
        "actual_margin_micros", "simulated_margin_micros")}  # fmt: skip
    return {"start": start, "end": end, "proposed": proposed, "tenants": dict(tenants),
            "total": total}  # fmt: skip
