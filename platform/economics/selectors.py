"""Revenue, cost and margin by tenant, model, plan or day, and the pricing simulator.

Everything reads the daily rollups, never the raw ledger. Revenue is what the rating engine
charges for each tenant-month (base fee, included inputs, graduated overage per tier,
fine-tuning), of which a range earns its part: the usage lines as the marginal charge of
the range's rows (the month's rollups rated up to the range's end minus rated up to its
start, as ``billing.usage_pricing.range_charges`` prices /v1/usage), so the included inputs
are granted once a month whatever the range and adjacent ranges add up to the month; the
base fee earned by the time the range covers, to the same effect. Each charge is shared
among the range's rollup rows by quantity: usage lines by billable inputs of their tier,
fine-tuning by trained tokens, the base fee by inputs. As in billing, usage is priced by
the plan it was made on (rollups keep it), each plan's included inputs covering its own
usage.

Which plans a tenant-month pays for, and how much of each plan's included inputs it has,
follow billing (``plan_months``). Where the tenant's plan spans cover the month's billing
periods, as billing shares their included inputs between the plans of a plan change: each
plan's included inputs are its share of the billing period its usage falls in (its time
there over the period's length, rounded up, as ``billing.rating.rate`` takes a share), and
its base fee is earned for its time in the month over the month's length (a move to free
leaves the paid plan the rest of its period, which Stripe did not credit). So a day on
scale earns a thirtieth of scale's fee and of its 2,000,000 included inputs, as Stripe and
the invoice charge it, and a range earns the fees of the plans it saw. Elsewhere (periods
from before spans were kept) a month is priced as before: every plan's included inputs
whole, and a base fee for each run of paid billing periods (``billing.BillingPeriod``)
overlapping it, a period cut short by a cancellation included; a tenant-month without
periods recorded pays its last call's plan's. A base fee is earned even in a range without
a call on its plan, reported then under model ``(base fee)`` on the days it was earned.

Revenue is in micro-units of each plan's currency, cost (the workers' compute time x their
hourly price) in micro-units of the cost currency (``cost_currency``): amounts in two
currencies are never added, and a margin is taken only where the two are the same."""

from __future__ import annotations

import copy
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from datetime import date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from django.db.models import F

from billing.periods import months
from billing.rating import rate
from billing.usage_pricing import allocate, line_key
from core.moments import utc_clamped
from plans.models import MODEL_TIERS, Plan
from plans.terms import micros_per_minor
from tenants.models import Tenant

from .models import UsageRollup
from .money import (
    SIMULATED,
    by_currency,
    cost_currency,
    margin_fill,
    margin_sums,
    simulated_margin_fill,
    usage_add,
)
from .plan_months import Month, Runs, Shared, month_terms

DIMENSIONS = ("tenant", "model", "plan", "day")
BASE_FEE = "(base fee)"  # the model a base fee without calls on its plan is reported under
MICROSECOND = timedelta(microseconds=1)
Money = tuple[UsageRollup, int, Plan]  # a rollup row, its revenue in minor units, its plan


def _days(start: datetime, end: datetime) -> tuple[date, date]:
    """The first and last UTC days that [start, end) touches: rollups are daily, so a range
    covers the days it touches. NOTE: the pages and ``simulate_pricing`` accept whole UTC
    days only, so that the usage counted and the base fee prorated cover the same span."""
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
    # NOTE: a day's rollups are ordered by their latest call: "the plan of the month's last
    # call" then does not change with the range asked for, nor with a rebuild (which
    # creates them in another order than the consumer did; ids alone decided before).
    for row in rows.order_by("day", F("last_at").asc(nulls_first=True), "pk"):
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
    rows: list[UsageRollup], plan: Plan, month: Month, share: Fraction | None
) -> dict[str, int]:
    """Charge line key -> minor units for ``rows`` rated together under ``plan``, with
    ``share`` of its included inputs (None: all of them), base fee excluded (it is prorated
    by time, not rated by usage)."""
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
    rated = rate(plan=plan, inputs_by_tier=inputs, trained_tokens=tokens, period_start=month[0],
                 period_end=month[1], include_base_fee=False, share=share)  # fmt: skip
    return {line.key: line.amount for line in rated.lines}


def _revenue(
    rows: list[UsageRollup],
    in_range: list[UsageRollup],
    plan: Plan,
    month: Month,
    days: tuple[date, date],
    base_fee: int,
    share: Fraction | None,
) -> dict[int, int]:
    """Minor units of revenue per row of ``in_range`` (by id): of one tenant-month's rows
    made on ``plan`` (``rows``, the whole month), the marginal charge of those in the range
    (the month rated up to the range's last day minus rated up to its first), each line
    shared by its quantity; and ``base_fee`` (prorated already) shared by inputs."""
    first, last = days
    charges = _charges([row for row in rows if row.day <= last], plan, month, share)
    before = _charges([row for row in rows if row.day < first], plan, month, share)
    for key, amount in before.items():
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


def _plan_cache() -> Callable[[str], Plan]:
    cache: dict[str, Plan] = {}

    def get(plan_id: str) -> Plan:
        if plan_id not in cache:
            cache[plan_id] = Plan.objects.get(pk=plan_id)
        return cache[plan_id]

    return get


def _rows_with_money(
    start: datetime, end: datetime, proposed: dict[str, dict[str, Any]] | None = None
) -> list[Money]:
    """(rollup row, revenue in minor units, plan used) for every live row in the range;
    ``proposed`` overrides plan terms by plan slug (the simulator)."""
    start, end = utc_clamped(start), utc_clamped(end)
    months_touched = list(months(start, end))
    if not months_touched:
        return []
    month_bounds = {m[0].date(): m for m in months_touched}
    terms_of = month_terms(months_touched)
    plans = _plans(proposed)
    out: list[Money] = []
    for (tenant_id, month_start), month_rows in _month_rows(months_touched).items():
        # No billing period recorded: the plan of the month's last call pays its fee.
        fallback = Runs(Counter([month_rows[-1].plan_id]))
        terms = terms_of.pop((tenant_id, month_start), fallback)
        out += _month_money(tenant_id, month_bounds[month_start], month_rows, terms,
                            (start, end), plans)  # fmt: skip
    for (tenant_id, month_start), terms in terms_of.items():  # months without a call
        out += _month_money(tenant_id, month_bounds[month_start], [], terms, (start, end), plans)
    return out


def _plans(proposed: dict[str, dict[str, Any]] | None) -> Callable[[str], Plan]:
    """Plan id -> the plan, with ``proposed`` terms where the simulator proposes some."""
    plan_of = _plan_cache()
    return lambda plan_id: _proposed(plan_of(plan_id), proposed)


def _month_money(
    tenant_id: str,
    month: Month,
    month_rows: list[UsageRollup],
    terms: Runs | Shared,
    bounds: tuple[datetime, datetime],
    plans: Callable[[str], Plan],
) -> list[Money]:
    """One tenant-month's rows in the range with their revenue: each plan's rows rated
    together under its terms, and its base fee for the range; a plan with a fee and no
    call in the range gets rows of its own."""
    start, end = bounds
    days = _days(start, end)
    by_plan: dict[str, list[UsageRollup]] = defaultdict(list)
    for row in month_rows:
        by_plan[row.plan_id].append(row)
    out: list[Money] = []
    for plan_id, rows in by_plan.items():
        in_range = [row for row in rows if days[0] <= row.day <= days[1]]
        if not in_range:
            continue
        plan = plans(plan_id)
        fee = terms.fee(plan, month, start, end)
        revenue = _revenue(rows, in_range, plan, month, days, fee, terms.share(plan_id))
        out += [(row, revenue[row.pk], plan) for row in in_range]
    charged = {row.plan_id for row, _, _ in out}
    for plan_id in terms.plans():  # no call on its plan in the range: rows of its own
        if plan_id not in charged:
            plan = plans(plan_id)
            out += _base_fee_rows(tenant_id, plan, terms.fee_days(plan, month, start, end))
    return out


def _proposed(plan: Plan, proposed: dict[str, dict[str, Any]] | None) -> Plan:
    if proposed and plan.slug in proposed:
        plan = copy.copy(plan)
        for name, value in proposed[plan.slug].items():
            setattr(plan, name, value)
    return plan


def _base_fee_rows(tenant_id: str, plan: Plan, fees: list[tuple[date, int]]) -> list[Money]:
    """A tenant-month's base fee in the range for a plan without a call in it: one unsaved
    rollup row (model ``BASE_FEE``, no usage) per day it was earned on."""
    rows = []
    for day, part in fees:
        row = UsageRollup(day=day, tenant_id=tenant_id, model=BASE_FEE, kind="base_fee",
                          livemode=True, plan_id=plan.id)  # fmt: skip
        rows.append((row, part, plan))
    return rows


def _test_mode_rows(start: datetime, end: datetime) -> list[UsageRollup]:
    """The test-mode (livemode=False) rollups of the range: compute paid for, never billed."""
    first, last = _days(utc_clamped(start), utc_clamped(end))
    return list(
        UsageRollup.objects.unscoped()
        .filter(livemode=False, day__gte=first, day__lte=last)
        .order_by("day", "pk")
    )


def tenant_names(tenant_ids: Iterable[str]) -> dict[str, str]:
    """Tenant id -> name, in one query: reports name tenants beside their ids."""
    return dict(Tenant.objects.filter(pk__in=set(tenant_ids)).values_list("pk", "name"))


def _key(row: UsageRollup, plan: Plan, by: str) -> str:
    return {"tenant": row.tenant_id, "model": row.model, "plan": plan.id,
            "day": row.day.isoformat()}[by]  # fmt: skip


def margins(*, start: datetime, end: datetime, by: str) -> list[dict[str, Any]]:
    """One line per ``by`` and revenue currency in [start, end), best margin first:
    classifications (requests, inputs) and fine-tuning (jobs, trained tokens) apart;
    revenue in micro-units of its ``currency``; live cost (of which fine-tuning) and
    test-mode cost in micro-units of the ``cost_currency``; the margin where the two
    currencies are one, else ``no_margin`` says why there is none."""
    if by not in DIMENSIONS:
        raise ValueError(f"by must be one of {DIMENSIONS}")
    lines: dict[tuple[str, str], dict[str, Any]] = defaultdict(margin_sums)
    for row, revenue, plan in _rows_with_money(start, end):
        usage_add(lines[(_key(row, plan, by), plan.currency)], row,
                  revenue * micros_per_minor(plan.currency))  # fmt: skip
    plan_of = _plan_cache()
    for row in _test_mode_rows(start, end):
        plan = plan_of(row.plan_id)
        lines[(_key(row, plan, by), plan.currency)]["test_cost_micros"] += row.cost_micros
    names = tenant_names(key for key, _ in lines) if by == "tenant" else {}
    report = []
    for (key, currency), sums in lines.items():
        label = f"{names[key]} ({key})" if key in names else key
        report.append(margin_fill({by: key, "label": label, "currency": currency, **sums}))
    return sorted(report, key=_best_first)


def _best_first(line: dict[str, Any]) -> tuple[bool, str, Decimal]:
    """Lines with a margin first, by margin; the others by currency, then revenue."""
    if line["margin_micros"] is not None:
        return False, "", -line["margin_micros"]
    return True, line["currency"], -Decimal(line["revenue_micros"])


def margin_totals(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The lines of one ``margins`` report summed per revenue currency (never across
    currencies), each with its margin where revenue and cost are in one currency."""
    names = ("requests", "inputs", "finetunes", "trained_tokens", "revenue_micros",
             "cost_micros", "finetune_cost_micros", "test_cost_micros")  # fmt: skip
    return [margin_fill(total) for total in by_currency(lines, names).values()]


def pricing_simulate(
    *, start: datetime, end: datetime, proposed: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Replay [start, end) of the ledger under proposed plan terms (by plan slug: any Plan
    field, e.g. base_fee, included_inputs, overage_tiers) against what was actually rated.
    Per tenant and revenue currency (``tenants``: keyed by tenant id, or "<id> (<currency>)"
    for a tenant billed in two currencies in the range) and per currency (``totals``;
    ``total`` when there is one currency): revenue, cost and margin, actual and simulated."""
    lines: dict[tuple[str, str], dict[str, Any]] = defaultdict(
        lambda: {"plan": "", "actual_revenue_micros": 0, "simulated_revenue_micros": 0,
                 "cost_micros": Decimal(0)}
    )  # fmt: skip
    for row, revenue, plan in _rows_with_money(start, end):
        t = lines[(row.tenant_id, plan.currency)]
        t["plan"] = plan.id
        t["actual_revenue_micros"] += revenue * micros_per_minor(plan.currency)
        t["cost_micros"] += Decimal(row.cost_micros)
    # (Not joined row by row: a proposed base fee can add months without calls, or drop them.)
    for row, revenue, plan in _rows_with_money(start, end, proposed):
        t = lines[(row.tenant_id, plan.currency)]
        t["plan"] = t["plan"] or plan.id
        t["simulated_revenue_micros"] += revenue * micros_per_minor(plan.currency)
    names = tenant_names(tenant_id for tenant_id, _ in lines)
    currencies = Counter(tenant_id for tenant_id, _ in lines)
    tenants: dict[str, dict[str, Any]] = {}
    by_name = sorted(lines.items(), key=lambda item: (names.get(item[0][0], ""), item[0]))
    for (tenant_id, currency), t in by_name:
        key = tenant_id if currencies[tenant_id] == 1 else f"{tenant_id} ({currency})"
        tenants[key] = simulated_margin_fill(
            {"tenant": tenant_id, "name": names.get(tenant_id, ""), "currency": currency, **t}
        )
    totals = {currency: simulated_margin_fill(total)
              for currency, total in by_currency(tenants.values(), SIMULATED).items()}  # fmt: skip
    total = next(iter(totals.values())) if len(totals) == 1 else None
    return {"start": start, "end": end, "proposed": proposed, "tenants": tenants,
            "totals": totals, "total": total, "cost_currency": cost_currency()}  # fmt: skip
