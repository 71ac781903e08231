"""Margins and the simulator rate usage per billing period, as billing does, where Stripe's
periods do not begin on the 1st: a period running over two calendar months is rated as
one, and each plan's share of that period's included inputs goes into one pool for the
usage on every plan in it. The reviewer's method:
the simulator with every base fee at 0 gives the usage charges alone, compared with
``rate_tenant_period(...).usage_total`` for the same tenant and period. October 2025 has
31 days, November 30."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from itertools import pairwise

import pytest

from billing.rating import PlanUsage, pooled, rate_tenant_period, rate_usage
from billing.usage_pricing import allocate
from economics.models import UsageRollup
from economics.period_usage import Row, UsagePeriod, _marginal, quantity
from economics.selectors import pricing_simulate
from plans.models import Plan
from tests.economics.test_plan_months import DEC, NOV, calls, day, recorded
from tests.factories import TenantFactory, rollups_unkeyed, subscribe

pytestmark = pytest.mark.django_db
OCT = datetime(2025, 10, 1, tzinfo=UTC)
NO_FEES = {"free": {"base_fee": 0}, "pro": {"base_fee": 0}, "scale": {"base_fee": 0}}


def usage_of(tenant, start, end) -> int:
    """Cents of usage the simulator charges the tenant in [start, end), base fees at 0."""
    report = pricing_simulate(start=start, end=end, proposed=NO_FEES)
    mine = report["tenants"].get(tenant.pk)
    return mine["simulated_revenue_micros"] // 10_000 if mine else 0


def billed(tenant, start, end) -> int:
    """What billing rates for the usage of the period [start, end)."""
    rated = rate_tenant_period(tenant=tenant, plan=Plan.objects.get(pk="pro@1"), start=start,
                               end=end, include_base_fee=False)  # fmt: skip
    return rated.usage_total


def test_an_upgrade_inside_a_period_anchored_on_the_17th_has_its_share_of_that_period():
    """Pro from 17 October, scale from 10 November: scale has 7 of the period's 31 days,
    7/31 of its 2,000,000 included inputs (451,613), pro 24/31 of its 100,000 (77,420).
    60,000 pro inputs on 20 October take the first 60,000 of the 529,033 (pro's are the
    dearer); 500,000 scale inputs on 12 November are 30,967 past the rest (619.34 at 20 per
    1,000: 619). Was 0: November gave scale the largest of its shares in the periods
    overlapping it, the whole of the next period's; then 968, each plan's share covering
    only its own usage (pro's 17,420 unused)."""
    tenant = TenantFactory()
    subscribe(tenant, "scale")
    recorded(tenant,
             [(day(17, OCT), day(17), None, "scale@1"), (day(17), day(17, DEC), None, "scale@1")],
             [(day(17, OCT), "pro@1"), (day(10), "scale@1")])  # fmt: skip
    calls(tenant, (60_000, "pro@1", day(20, OCT)), (500_000, "scale@1", day(12)))
    assert billed(tenant, day(17, OCT), day(17)) == 619
    assert usage_of(tenant, day(17, OCT), day(17)) == 619
    assert usage_of(tenant, NOV, DEC) == 619
    # Ranges cut anywhere add up to the period's charge.
    cuts = [OCT, NOV, day(12), day(13), DEC]
    assert [usage_of(tenant, lo, hi) for lo, hi in pairwise(cuts)] == [0, 0, 619, 0]


def test_a_subscription_begun_on_the_29th_rates_its_period_as_one():
    """Pro from 29 October (a period to 29 November): 80,000 inputs on 30 October and
    80,000 on 5 November are 160,000 in one period, 60,000 past pro's 100,000 (2,400 at 40
    per 1,000), all of it November's: its inputs pushed the period past the allowance. Was
    0: each calendar month had a whole allowance."""
    tenant = TenantFactory()
    subscribe(tenant, "pro")
    recorded(tenant, [(OCT, day(29, OCT), None, "free@1"), (day(29, OCT), day(29), None, "pro@1")],
             [(OCT, "free@1"), (day(29, OCT), "pro@1")])  # fmt: skip
    calls(tenant, (80_000, "pro@1", day(30, OCT)), (80_000, "pro@1", day(5)))
    assert billed(tenant, day(29, OCT), day(29)) == 2_400
    assert usage_of(tenant, day(29, OCT), day(29)) == 2_400
    assert [usage_of(tenant, OCT, NOV), usage_of(tenant, NOV, DEC)] == [0, 2_400]
    assert usage_of(tenant, OCT, DEC) == 2_400


def test_a_day_split_by_a_period_boundary_goes_by_the_time_of_its_last_call():
    """Free, then pro from 14:32 on 29 October. Free's calls at noon that day and pro's at
    15:00 fall on the same UTC day, either side of the boundary; each rollup row is rated in
    the period its last call was made in, as billing rates each call in its own: pro's
    80,000 there and 90,000 on 5 November are 70,000 past its 100,000 (2,800). A row without
    its last call's time (from before it was kept) goes to the period its day ends in."""
    tenant = TenantFactory()
    subscribe(tenant, "pro")
    boundary = day(29, OCT) + timedelta(hours=14, minutes=32)
    renewal = boundary + timedelta(days=31)
    recorded(tenant, [(OCT, boundary, None, "free@1"), (boundary, renewal, None, "pro@1")],
             [(OCT, "free@1"), (boundary, "pro@1")])  # fmt: skip
    afternoon = day(29, OCT) + timedelta(hours=3)  # (calls are made at noon, plus this)
    calls(tenant, (500, "free@1", day(29, OCT)), (80_000, "pro@1", afternoon),
          (90_000, "pro@1", day(5)))  # fmt: skip
    assert billed(tenant, boundary, renewal) == 2_800
    assert usage_of(tenant, OCT, DEC) == 2_800
    assert usage_of(tenant, OCT, NOV) + usage_of(tenant, NOV, DEC) == 2_800
    UsageRollup.objects.unscoped().filter(tenant_id=tenant.pk).update(last_at=None)
    assert usage_of(tenant, OCT, DEC) == 2_800


def test_a_day_of_several_keys_is_rated_as_its_one_row_was_before_the_key_was_kept():
    """Rollups hold a row per API key; the pages sum a day's keys first, so their figures
    are those of one row per day, model and plan, as before the key joined the grain (and
    do not change when rebuild_rollups keys older days). Here pro renews at 14:32 on 29
    October: key_a's 80,000 inputs at noon and key_b's 30,000 at 15:00 are one row, whose
    last call is in the new period (the module's NOTE): 10,000 past 100,000, 400. Rated
    apart, key_a's row went to the period before, and the day was rated 0."""
    tenant = TenantFactory()
    subscribe(tenant, "pro")
    boundary = day(29, OCT) + timedelta(hours=14, minutes=32)
    recorded(tenant, [(OCT, boundary, None, "pro@1"), (boundary, boundary + timedelta(days=31),
                                                         None, "pro@1")],
             [(OCT, "pro@1")])  # fmt: skip
    afternoon = day(29, OCT) + timedelta(hours=3)  # (calls are made at noon, plus this)
    calls(tenant, (80_000, "pro@1", day(29, OCT)), (30_000, "pro@1", afternoon),
          keys=("key_a", "key_b"))  # fmt: skip
    assert UsageRollup.objects.for_tenant(tenant).count() == 2
    cuts = [OCT, day(29, OCT), day(30, OCT), NOV, DEC]
    keyed = [usage_of(tenant, lo, hi) for lo, hi in pairwise(cuts)]
    assert keyed == [0, 400, 0, 0]
    rollups_unkeyed(tenant=tenant, before=DEC.date())  # one row, as before the upgrade
    assert UsageRollup.objects.for_tenant(tenant).count() == 1
    assert [usage_of(tenant, lo, hi) for lo, hi in pairwise(cuts)] == keyed


def _charges_per_row(rows, plans, period) -> dict[tuple[str, str], int]:
    """The per-row reference ``_marginal`` was written from: each row's quantity added up
    in a loop, then rated."""
    if not rows:
        return {}
    segments: dict[Plan, PlanUsage] = {}
    for row in rows:
        made_on = plans(row.plan_id)
        key, count = quantity(row, made_on)
        segment = segments.setdefault(made_on, PlanUsage())
        if key.startswith("usage:"):
            segment.inputs[key.removeprefix("usage:")] += count
        else:
            segment.tokens += count
    rated = rate_usage(segments, pooled(period.shares, plans))
    return {(plan.id, line.key): line.amount for plan, lines in rated.items() for line in lines}


def _marginal_per_row(rows, plans, period, days) -> dict[int, int]:
    first, last = days
    in_range = [row for row in rows if first <= row.day <= last]
    charges = _charges_per_row([row for row in rows if row.day <= last], plans, period)
    before = _charges_per_row([row for row in rows if row.day < first], plans, period)
    quantities = {}
    for row in in_range:
        key, count = quantity(row, plans(row.plan_id))
        quantities[row.pk] = ((row.plan_id, key), count)
    inputs = {row.pk: row.inputs for row in in_range}
    revenue = dict.fromkeys(inputs, 0)
    for key, amount in charges.items():
        amount -= before.get(key, 0)
        weights = {pk: q for pk, (k, q) in quantities.items() if k == key}
        if not any(weights.values()):
            weights = inputs
        if not any(weights.values()):
            weights = dict.fromkeys(inputs, 1)
        for pk, part in allocate(amount, weights).items():
            revenue[pk] += part
    return revenue


@pytest.mark.parametrize("seed", range(40))
def test_a_periods_rows_are_charged_as_summed_row_by_row(seed):
    """``_marginal`` adds the rows' quantities up in one pass; each row's charge is the one
    the per-row reference gives, on random rows: all tiers, fine-tunes, cached inputs past
    the inputs, voids netted to negative quantities, rows without ``last_at``, rows before,
    in and after the range, on one plan or two, the plans' shares of the period pooled or
    each plan's whole allowance."""
    rng = random.Random(seed)
    on = rng.sample(["free@1", "pro@1", "scale@1"], rng.choice([1, 2]))
    by_id = {plan_id: Plan.objects.get(pk=plan_id) for plan_id in on}
    for plan in by_id.values():
        plan.cached_results_billed = rng.random() < 0.5
    share = rng.choice([None, Fraction(7, 31), Fraction(1)])
    shares = None if share is None else {on[0]: share}
    if shares and len(on) == 2:
        shares[on[1]] = 1 - share
    period = UsagePeriod(OCT, NOV, shares)
    models = ["minilm-l6", "minilm-l6-int8", "ft:minilm-l6-int8:x:1", "ft:minilm-l6:x:2"]
    rows = []
    for pk in range(rng.randint(1, 40)):
        inputs = rng.choice([0, rng.randint(-5_000, 0), rng.randint(1, 3_000_000)])
        kind = "fine_tune" if rng.random() < 0.15 else "inference"
        rows.append(
            Row(
                pk=pk + 1,
                day=(OCT + timedelta(days=rng.randrange(31))).date(),
                tenant_id="ten_x",
                model=rng.choice(models),
                kind=kind,
                livemode=True,
                plan_id=rng.choice(on),
                inputs=inputs,
                cached=rng.randint(-10, 400_000),
                tokens=rng.randint(-100_000, 900_000),
                last_at=rng.choice([None, OCT + timedelta(hours=rng.randrange(744))]),
            )
        )
    first = (OCT + timedelta(days=rng.randrange(31))).date()
    days = (first, first + timedelta(days=rng.randrange(20)))
    plans = by_id.__getitem__
    assert _marginal(rows, plans, period, days) == _marginal_per_row(rows, plans, period, days)
