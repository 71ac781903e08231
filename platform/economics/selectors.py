"""Revenue, cost and margin by tenant, model, plan or day, and the pricing simulator.

Everything reads the daily rollups, never the raw ledger. Revenue is what the rating engine
charges (base fee, included inputs, graduated overage per tier, fine-tuning), of which a
range earns its part. Usage is rated per billing period, as billing rates it
(``period_usage``): each period's rows together, past the period's included inputs (each
plan's share of its own, pooled: ``billing.rating.pooled``), a range earning the marginal
charge of its rows in their period (rated up to the range's end minus rated up to its
start, as ``billing.usage_pricing.range_charges`` prices /v1/usage), so the included inputs
are granted once a period whatever the range, a period anchored on the 17th or the 29th is
rated as one across its two calendar months, and adjacent ranges add up to the whole. A
tenant without billing periods recorded is rated in calendar months, every plan's included
inputs whole and covering its own usage, as before. As in billing, usage is priced by the
plan it was made on (rollups keep it).

The base fee is earned by the time the range covers in each calendar month, to the same
effect (``plan_months``): where the tenant's plan spans cover the month's billing periods,
each plan's fee for its time in the month over the month's length (a move to free leaves
the paid plan the rest of its period, which Stripe did not credit), so a day on scale earns
a thirtieth of scale's fee; elsewhere (periods from before spans were kept) a base fee for
each run of paid billing periods (``billing.BillingPeriod``) overlapping the month, a period
cut short by a cancellation included; a tenant-month without periods recorded pays its last
call's plan's. A base fee is earned even in a range without a call on its plan, reported
then under model ``(base fee)`` on the days it was earned. Each charge is shared among the
range's rollup rows by quantity: usage lines by billable inputs of their tier, fine-tuning
by trained tokens, the base fee by inputs.

Revenue is in micro-units of each plan's currency, cost (the workers' compute time x their
hourly price) in micro-units of the cost currency (``cost_currency``): amounts in two
currencies are never added, and a margin is taken only where the two are the same."""

from __future__ import annotations

import copy
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import cache
from typing import Any

from django.db.models import F, Max, Min, Q, QuerySet, Sum

from billing.periods import months
from billing.usage_pricing import allocate
from core.moments import utc_clamped
from plans.models import Plan
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
from .period_usage import Row, read_from, usage_revenue
from .plan_months import Month, Recorded, Runs, Shared, month_terms, recorded

DIMENSIONS = ("tenant", "model", "plan", "day")
BASE_FEE = "(base fee)"  # the model a base fee without calls on its plan is reported under
MICROSECOND = timedelta(microseconds=1)
Money = tuple[Row, int, Plan]  # a rollup row, its revenue in minor units, its plan


def _days(start: datetime, end: datetime) -> tuple[date, date]:
    """The first and last UTC days that [start, end) touches: rollups are daily, so a range
    covers the days it touches. NOTE: the pages and ``simulate_pricing`` accept whole UTC
    days only, so that the usage counted and the base fee prorated cover the same span."""
    return start.date(), (end - MICROSECOND).date()


def _live_rows(early: dict[str, date], months_touched: list[Month]) -> list[Row]:
    """Every live rollup row of the months a range touches, and of a tenant in ``early``
    from that day (its billing period's start), in day order: what a range's rows are
    charged depends on the usage before them in their billing period (it may have used up
    the included inputs), and the plan a month ends on on the usage after them."""
    since = Q(day__gte=months_touched[0][0].date())
    by_day: dict[date, list[str]] = defaultdict(list)
    for tenant_id, day in early.items():
        by_day[day].append(tenant_id)
    for day, tenant_ids in by_day.items():
        since |= Q(day__gte=day, tenant_id__in=tenant_ids)
    rows = UsageRollup.objects.unscoped().filter(
        since, livemode=True, day__lte=(months_touched[-1][1] - MICROSECOND).date()
    )
    return _keys_summed(rows)


# A rollup's grain without its API key: what the pages rate and report by.
UNKEYED_GRAIN = ("day", "tenant_id", "model", "kind", "livemode", "plan_id")
_SUMMED = ("requests", "inputs", "cached", "tokens", "cost_micros")  # (Row's; not compute)


def _keys_summed(rows: QuerySet[UsageRollup]) -> list[Row]:
    """``rows`` summed over their API keys: one ``Row`` per (day, tenant, model, kind,
    mode, plan), its id its first row's and its ``last_at`` their latest. NOTE: no page
    reports by key, and one row per grain is what their figures were taken from: a charge
    is shared among rows (largest remainder, ``allocate``), a row goes to the billing
    period of its latest call, and a month's plan is its last row's; rows split by key
    would move a minor unit between lines, or part of a day across a period boundary."""
    summed = (
        rows.values(*UNKEYED_GRAIN)
        .annotate(**{f"sum_{name}": Sum(name) for name in _SUMMED},
                  latest=Max("last_at"), first_id=Min("id"))
        # NOTE: a day's rollups are ordered by their latest call: "the plan of the month's
        # last call" then does not change with the range asked for, nor with a rebuild
        # (which creates them in another order than the consumer did).
        .order_by("day", F("latest").asc(nulls_first=True), "first_id")
        .values_list("first_id", *UNKEYED_GRAIN, "latest", *(f"sum_{n}" for n in _SUMMED))
    )  # fmt: skip
    return list(map(Row._make, summed))  # (Row's fields, in its order)


def _plan_cache() -> Callable[[str], Plan]:
    """Plan id -> the plan, each read once."""
    return cache(lambda plan_id: Plan.objects.get(pk=plan_id))


@dataclass(frozen=True)
class _Read:
    """What a range's revenue is rated from: the months it touches, their billing periods
    and spans (``book``), how each tenant-month's base fees are counted, and the live rows
    (``_live_rows``). Read once, rated under the actual terms and the proposed ones."""

    start: datetime
    end: datetime
    months_touched: list[Month]
    book: Recorded
    terms_of: dict[tuple[str, date], Runs | Shared]
    rows: list[Row]


def _read(start: datetime, end: datetime) -> _Read | None:
    start, end = utc_clamped(start), utc_clamped(end)
    months_touched = list(months(start, end))
    if not months_touched:
        return None
    book = recorded(months_touched)
    terms_of = month_terms(months_touched, book)
    rows = _live_rows(read_from(book, months_touched[0][0]), months_touched)
    return _Read(start, end, months_touched, book, terms_of, rows)


def _rows_with_money(
    start: datetime,
    end: datetime,
    proposed: dict[str, dict[str, Any]] | None = None,
    read: _Read | None = None,
) -> list[Money]:
    """(rollup row, revenue in minor units, plan used) for every live row in the range;
    ``proposed`` overrides plan terms by plan slug or version (the simulator); ``read``: the
    range read already (``_read``)."""
    read = read or _read(start, end)
    if read is None:
        return []
    start, end, months_touched, rows = read.start, read.end, read.months_touched, read.rows
    lo = months_touched[0][0]
    terms_of = dict(read.terms_of)  # (popped below: a read is rated more than once)
    plans = _plans(proposed)
    usage = usage_revenue(rows, read.book, lo, _days(start, end), plans)
    by_month: dict[tuple[str, date], list[Row]] = defaultdict(list)
    firsts: dict[date, date] = {}  # a day -> its month's first day, once per day
    for row in rows:
        if row.day >= lo.date():
            first = firsts.get(row.day) or firsts.setdefault(row.day, row.day.replace(day=1))
            by_month[(row.tenant_id, first)].append(row)
    month_bounds = {m[0].date(): m for m in months_touched}
    out: list[Money] = []
    for (tenant_id, month_start), month_rows in by_month.items():
        # No billing period recorded: the plan of the month's last call pays its fee.
        fallback = Runs(Counter([month_rows[-1].plan_id]))
        terms = terms_of.pop((tenant_id, month_start), fallback)
        out += _month_money(tenant_id, month_bounds[month_start], month_rows, terms,
                            (start, end), plans, usage)  # fmt: skip
    for (tenant_id, month_start), terms in terms_of.items():  # months without a call
        out += _month_money(tenant_id, month_bounds[month_start], [], terms, (start, end),
                            plans, usage)  # fmt: skip
    return out


def _plans(proposed: dict[str, dict[str, Any]] | None) -> Callable[[str], Plan]:
    """Plan id -> the plan, with ``proposed`` terms where the simulator proposes some (one
    copy per plan, not one per call)."""
    plan_of = _plan_cache()
    return cache(lambda plan_id: _proposed(plan_of(plan_id), proposed))


def _month_money(
    tenant_id: str,
    month: Month,
    month_rows: list[Row],
    terms: Runs | Shared,
    bounds: tuple[datetime, datetime],
    plans: Callable[[str], Plan],
    usage: dict[int, int],
) -> list[Money]:
    """One tenant-month's rows in the range with their revenue: their usage revenue (rated
    per billing period: ``usage``), and each plan's base fee for the range shared among its
    rows by inputs; a plan with a fee and no call in the range gets rows of its own."""
    start, end = bounds
    first, last = _days(start, end)
    by_plan: dict[str, list[Row]] = defaultdict(list)
    for row in month_rows:
        if first <= row.day <= last:
            by_plan[row.plan_id].append(row)
    out: list[Money] = []
    for plan_id, in_range in by_plan.items():
        plan = plans(plan_id)
        # (A fine-tune's inputs are its training examples: not what the fee is shared by.)
        weights = {row.pk: 0 if row.kind == "fine_tune" else row.inputs for row in in_range}
        if not any(weights.values()):
            weights = dict.fromkeys(weights, 1)
        fees = allocate(terms.fee(plan, month, start, end), weights)
        out += [(row, usage.get(row.pk, 0) + fees[row.pk], plan) for row in in_range]
    for plan_id in terms.plans():  # no call on its plan in the range: rows of its own
        if plan_id not in by_plan:
            plan = plans(plan_id)
            out += _base_fee_rows(tenant_id, plan, terms.fee_days(plan, month, start, end))
    return out


def _proposed(plan: Plan, proposed: dict[str, dict[str, Any]] | None) -> Plan:
    """``plan`` with the terms proposed for its slug (every version), then for its own
    version (``pro@1``), which win."""
    terms = {**proposed.get(plan.slug, {}), **proposed.get(plan.id, {})} if proposed else {}
    if terms:
        plan = copy.copy(plan)
        for name, value in terms.items():
            setattr(plan, name, value)
    return plan


def _base_fee_rows(tenant_id: str, plan: Plan, fees: list[tuple[date, int]]) -> list[Money]:
    """A tenant-month's base fee in the range for a plan without a call in it: one ``Row``
    (model ``BASE_FEE``, no usage) per day it was earned on."""
    rows: list[Money] = []
    for day, part in fees:
        row = Row(pk=0, day=day, tenant_id=tenant_id, model=BASE_FEE, kind="base_fee",
                  livemode=True, plan_id=plan.id)  # fmt: skip
        rows.append((row, part, plan))
    return rows


def _test_mode_rows(start: datetime, end: datetime) -> list[Row]:
    """The test-mode (livemode=False) rollups of the range: compute paid for, never billed."""
    first, last = _days(utc_clamped(start), utc_clamped(end))
    return _keys_summed(
        UsageRollup.objects.unscoped().filter(livemode=False, day__gte=first, day__lte=last)
    )


def tenant_names(tenant_ids: Iterable[str]) -> dict[str, str]:
    """Tenant id -> name, in one query: reports name tenants beside their ids."""
    return dict(Tenant.objects.filter(pk__in=set(tenant_ids)).values_list("pk", "name"))


_KEYS: dict[str, Callable[[Row, Plan], str]] = {
    "tenant": lambda row, plan: row.tenant_id, "model": lambda row, plan: row.model,
    "plan": lambda row, plan: plan.id, "day": lambda row, plan: row.day.isoformat(),
}  # fmt: skip


def margins(*, start: datetime, end: datetime, by: str) -> list[dict[str, Any]]:
    """One line per ``by`` and revenue currency in [start, end), best margin first:
    classifications (requests, inputs) and fine-tuning (jobs, trained tokens) apart;
    revenue in micro-units of its ``currency``; live cost (of which fine-tuning) and
    test-mode cost in micro-units of the ``cost_currency``; the margin where the two
    currencies are one, else ``no_margin`` says why there is none."""
    if by not in DIMENSIONS:
        raise ValueError(f"by must be one of {DIMENSIONS}")
    lines: dict[tuple[str, str], dict[str, Any]] = defaultdict(margin_sums)
    key_of = _KEYS[by]
    for row, revenue, plan in _rows_with_money(start, end):
        usage_add(lines[(key_of(row, plan), plan.currency)], row,
                  revenue * micros_per_minor(plan.currency))  # fmt: skip
    plan_of = _plan_cache()
    for row in _test_mode_rows(start, end):
        plan = plan_of(row.plan_id)
        lines[(key_of(row, plan), plan.currency)]["test_cost_micros"] += row.cost_micros
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
             "finetune_revenue_micros", "cost_micros", "finetune_cost_micros",
             "test_cost_micros")  # fmt: skip
    return [margin_fill(total) for total in by_currency(lines, names).values()]


def pricing_simulate(
    *, start: datetime, end: datetime, proposed: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Replay [start, end) of the ledger under proposed plan terms (by plan slug or version:
    any Plan field, e.g. base_fee, included_inputs, overage_tiers) against what was actually
    rated.
    Per tenant and revenue currency (``tenants``: keyed by tenant id, or "<id> (<currency>)"
    for a tenant billed in two currencies in the range) and per currency (``totals``;
    ``total`` when there is one currency): revenue, cost and margin, actual and simulated."""
    lines: dict[tuple[str, str], dict[str, Any]] = defaultdict(
        lambda: {"plan": "", "actual_revenue_micros": 0, "simulated_revenue_micros": 0,
                 "cost_micros": Decimal(0)}
    )  # fmt: skip
    read = _read(start, end)  # (once: rated under the actual terms, then the proposed)
    for row, revenue, plan in _rows_with_money(start, end, read=read):
        t = lines[(row.tenant_id, plan.currency)]
        t["plan"] = plan.id
        t["actual_revenue_micros"] += revenue * micros_per_minor(plan.currency)
        t["cost_micros"] += Decimal(row.cost_micros)
    # (Not joined row by row: a proposed base fee can add months without calls, or drop them.)
    for row, revenue, plan in _rows_with_money(start, end, proposed, read):
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
