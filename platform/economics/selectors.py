"""Revenue, cost and margin by tenant, model, plan or day, and the pricing simulator.

Everything reads the daily rollups, never the raw ledger. Revenue is what the rating engine
charges for each tenant-month (base fee, included inputs, graduated overage per tier,
fine-tuning), of which a range earns its part: the usage lines as the marginal charge of
the range's rows (the month's rollups rated up to the range's end minus rated up to its
start, as ``billing.usage_pricing.range_charges`` prices /v1/usage), so the included inputs
are granted once a month whatever the range and adjacent ranges add up to the month; the
base fee prorated by the time of the month the range covers, to the same effect. Each
charge is shared among the range's rollup rows by quantity: usage lines by billable inputs
of their tier, fine-tuning by trained tokens, the base fee by inputs. As in billing, usage
is priced by the plan it was made on (rollups keep it), each plan's included inputs
covering its own usage; the base fee is the plan the tenant-month ends on. The plan a
tenant-month ends on comes from the billing periods kept (``billing.BillingPeriod``) where
there are any, else from its last call; its base fee is earned even in a range without a
call on it, reported then under model ``(base fee)`` and spread over the days covered.
Cost is the workers' compute time x their hourly price. Both are reported in micro-units of
the currency so that a margin per call is visible."""

from __future__ import annotations

import copy
from collections import defaultdict
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from billing.models import BillingPeriod
from billing.periods import months, utc_clamped
from billing.rating import rate
from billing.usage_pricing import allocate, line_key
from plans.models import MODEL_TIERS, Plan
from plans.terms import micros_per_minor

from .models import UsageRollup

DIMENSIONS = ("tenant", "model", "plan", "day")
BASE_FEE = "(base fee)"  # the model a base fee without calls on its plan is reported under
MICROSECOND = timedelta(microseconds=1)


def _days(start: datetime, end: datetime) -> tuple[date, date]:
    """The first and last UTC days that [start, end) touches: rollups are daily, so a range
    covers the days it touches."""
    return start.date(), (end - MICROSECOND).date()


def _month_rows(
    months_touched: list[tuple[datetime, datetime]],
) -> dict[tuple[str, date], list[UsageRollup]]:
    """Every live rollup row of the months a range touches, whole, by tenant-month in day
    order: what a range's rows are charged depends on the usage before them in their month
    (it may have used up the included inputs), and the plan a month ends on on the usage
    after them."""
    rows = UsageRollup.objects.unscoped().filter(
        livemode=True,
        day__gte=months_touched[0][0].date(),
        day__lte=(months_touched[-1][1] - MICROSECOND).date(),
    )
    grouped: dict[tuple[str, date], list[UsageRollup]] = defaultdict(list)
    # NOTE: a day's rollups keep no time, so their ids break the tie between the plans of
    # one day (the consumer creates them as it meets them): "the plan of the month's last
    # call" then does not change with the range asked for.
    for row in rows.order_by("day", "pk"):
        grouped[(row.tenant_id, row.day.replace(day=1))].append(row)
    return grouped


def _quantity(row: UsageRollup, plan: Plan) -> tuple[str, int]:
    """The charge line a rollup row counts towards under ``plan``, and by how much:
    billable inputs (cached ones only where the plan bills them), or trained tokens."""
    if row.kind != "inference":
        return line_key(row.kind, row.model), row.tokens
    billable = row.inputs - (0 if plan.cached_results_billed else row.cached)
    return line_key(row.kind, row.model), max(billable, 0)


def _charges(
    rows: list[UsageRollup], plan: Plan, month: tuple[datetime, datetime]
) -> dict[str, int]:
    """Charge line key -> minor units for ``rows`` rated together under ``plan``, base fee
    excluded (it is prorated by time, not rated by usage)."""
    if not rows:
        return {}
    inputs: dict[str, int] = dict.fromkeys(MODEL_TIERS, 0)
    tokens = 0
    for row in rows:
        key, quantity = _quantity(row, plan)
        if key.startswith("usage:"):
            inputs[key.removeprefix("usage:")] += quantity
        else:
            tokens += quantity
    rated = rate(plan=plan, inputs_by_tier=inputs, trained_tokens=tokens,
                 period_start=month[0], period_end=month[1], include_base_fee=False)  # fmt: skip
    return {line.key: line.amount for line in rated.lines}


def _revenue(
    rows: list[UsageRollup],
    in_range: list[UsageRollup],
    plan: Plan,
    month: tuple[datetime, datetime],
    days: tuple[date, date],
    base_fee: int,
) -> dict[int, int]:
    """Minor units of revenue per row of ``in_range`` (by id): of one tenant-month's rows
    made on ``plan`` (``rows``, the whole month), the marginal charge of those in the range
    (the month rated up to the range's last day minus rated up to its first), each line
    shared by its quantity; and ``base_fee`` (prorated already) shared by inputs."""
    first, last = days
    charges = _charges([row for row in rows if row.day <= last], plan, month)
    for key, amount in _charges([row for row in rows if row.day < first], plan, month).items():
        charges[key] = charges.get(key, 0) - amount  # lines only grow with usage: never < 0
    quantities = {row.pk: _quantity(row, plan) for row in in_range}
    inputs = {row.pk: row.inputs for row in in_range}
    revenue: dict[int, int] = defaultdict(int)
    for key, amount in [*charges.items(), ("base_fee", base_fee)]:
        weights = {pk: q for pk, (k, q) in quantities.items() if k == key}
        if not any(weights.values()):
            # NOTE: a line can grow without a row of its own in the range: dearer inputs in
            # the range take the included inputs that cheaper ones before it had, so the
            # cheaper tier's line grows. The range's inputs made it grow.
            weights = inputs
        if not any(weights.values()):
            weights = dict.fromkeys(inputs, 1)
        for pk, part in allocate(amount, weights).items():
            revenue[pk] += part
    return revenue


def _prorated(amount: int, month: tuple[datetime, datetime], start: datetime, end: datetime) -> int:
    """A month's base fee for the part of the month that [start, end) covers: the fee earned
    by the range's end minus that earned by its start. Adjacent ranges therefore add up to
    the month's fee exactly (4,900 over three 10-day ranges of a 30-day month: 1,633 + 1,634
    + 1,633), each within a minor unit of its exact share."""
    return _earned(amount, month, end) - _earned(amount, month, start)


def _earned(amount: int, month: tuple[datetime, datetime], moment: datetime) -> int:
    """The part of a month's fee earned from the month's start to ``moment``: exact in
    integer microseconds, rounded half-up to the minor unit once."""
    moment = min(max(moment, month[0]), month[1])
    length = (month[1] - month[0]) // MICROSECOND
    whole, rest = divmod(amount * ((moment - month[0]) // MICROSECOND), length)
    return whole + int(2 * rest >= length)


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
    start, end = utc_clamped(start), utc_clamped(end)
    months_touched = list(months(start, end))
    if not months_touched:
        return []
    plan_of = _plan_cache()
    out: list[tuple[UsageRollup, int, Plan]] = []
    days = _days(start, end)
    month_bounds = {m[0].date(): m for m in months_touched}
    ends_on = _month_end_plans(start, end)
    for (tenant_id, month_start), month_rows in _month_rows(months_touched).items():
        month = month_bounds[month_start]
        # The plan the month ends on pays its base fee: as its billing periods say, else the
        # plan of its last call.
        last = ends_on.pop((tenant_id, month_start), month_rows[-1].plan_id)
        by_plan: dict[str, list[UsageRollup]] = defaultdict(list)
        for row in month_rows:
            by_plan[row.plan_id].append(row)
        fee_charged = False
        for plan_id, rows in by_plan.items():
            in_range = [row for row in rows if days[0] <= row.day <= days[1]]
            if not in_range:
                continue
            plan = _proposed(plan_of(plan_id), proposed)
            fee = _prorated(plan.base_fee, month, start, end) if plan_id == last else 0
            revenue = _revenue(rows, in_range, plan, month, days, fee)
            out += [(row, revenue[row.pk], plan) for row in in_range]
            fee_charged = fee_charged or plan_id == last
        if not fee_charged:  # no call on it in the range: a fee of its own
            plan = _proposed(plan_of(last), proposed)
            out += _base_fee_rows(tenant_id, plan, month, start, end)
    for (tenant_id, month_start), plan_id in ends_on.items():  # months without a call
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
    """The base fee of a tenant-month whose plan made no call in the range, prorated as one
    with calls is: one unsaved rollup row (model ``BASE_FEE``, no usage) per day of the
    range in the month."""
    if not plan.base_fee:
        return []
    first, last = _days(max(start, month[0]), min(end, month[1]))
    amount = _prorated(plan.base_fee, month, start, end)
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
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
        t["revenue_micros"] += revenue * micros_per_minor(plan.currency)
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
        t["actual_revenue_micros"] += revenue * micros_per_minor(plan.currency)
        t["cost_micros"] += Decimal(row.cost_micros)
    # (Not joined row by row: a proposed base fee can add months without calls, or drop them.)
    for row, revenue, plan in _rows_with_money(start, end, proposed):
        simulated = revenue * micros_per_minor(plan.currency)
        tenants[row.tenant_id]["simulated_revenue_micros"] += simulated
    for t in tenants.values():
        t["actual_margin_micros"] = t["actual_revenue_micros"] - t["cost_micros"]
        t["simulated_margin_micros"] = t["simulated_revenue_micros"] - t["cost_micros"]
    total = {name: sum((t[name] for t in tenants.values()), Decimal(0)) for name in (
        "actual_revenue_micros", "simulated_revenue_micros", "cost_micros",
        "actual_margin_micros", "simulated_margin_micros")}  # fmt: skip
    return {"start": start, "end": end, "proposed": proposed, "tenants": dict(tenants),
            "total": total}  # fmt: skip
