"""The pooled included inputs of a period (``rating.pooled``, ``rating.rate_usage``), on
random plans, shares and usage: the properties billing and the reports rely on. A bigger
pool (a move up, a price cut keeping the allowance) never raises a line; more usage never
lowers one (a report's marginal charge is never negative); the pool covers what it can,
never more than was used; and one plan for the whole period is priced as before pooling."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.rating import Allowance, PlanUsage, pooled, rate_usage
from plans.models import MODEL_TIERS, Plan

pytestmark = pytest.mark.django_db  # (the suite seeds the catalogue; these read none of it)
PRICES = st.sampled_from(["0", "0.5", "8", "12", "15", "20", "24", "25", "40"])


@st.composite
def plans(draw: st.DrawFn, slug: str) -> Plan:
    """A plan of random terms: included inputs, graduated tiers per model tier (or none),
    a fine-tuning price. Not saved: the rating engine reads its fields alone."""
    tiers = {}
    for tier in MODEL_TIERS:
        if draw(st.booleans()):
            first = draw(PRICES)
            if draw(st.booleans()):
                up_to = draw(st.integers(1, 2_000_000))
                tiers[tier] = [{"up_to": up_to, "unit_amount": first},
                               {"up_to": None, "unit_amount": draw(PRICES)}]  # fmt: skip
            else:
                tiers[tier] = [{"up_to": None, "unit_amount": first}]
    return Plan(
        id=f"{slug}@1", slug=slug, version=1, name=slug.title(),
        included_inputs=draw(st.integers(0, 3_000_000)), overage_tiers=tiers,
        finetune_unit_amount=Decimal(draw(st.sampled_from(["0", "0.3", "0.5"]))),
    )  # fmt: skip


@st.composite
def periods(draw: st.DrawFn) -> tuple[dict[Plan, PlanUsage], dict[str, Fraction]]:
    """Usage on one to three plans, and each plan's share of the period (some with none)."""
    on = [draw(plans(slug)) for slug in ("alpha", "beta", "gamma")[: draw(st.integers(1, 3))]]
    segments = {
        plan: PlanUsage(
            {tier: draw(st.integers(0, 4_000_000)) for tier in MODEL_TIERS},
            draw(st.integers(0, 2_000_000)),
        )
        for plan in on
    }
    cuts = sorted(draw(st.lists(st.integers(1, 29), min_size=len(on) - 1, max_size=len(on) - 1)))
    bounds = [0, *cuts, 30]
    shares = {
        plan.pk: Fraction(hi - lo, 30)
        for plan, lo, hi in zip(on, bounds, bounds[1:], strict=False)
        if hi > lo
    }
    return segments, shares


def _lines(segments: dict[Plan, PlanUsage], allowance: Allowance | None) -> dict[tuple, int]:
    return {
        (plan.pk, line.key): line.amount
        for plan, lines in rate_usage(segments, allowance).items()
        for line in lines
    }


def _of(segments: dict[Plan, PlanUsage]):  # type: ignore[no-untyped-def]
    by_id = {plan.pk: plan for plan in segments}
    return by_id.__getitem__


@settings(max_examples=150, deadline=None)
@given(periods(), st.integers(0, 3_000_000))
def test_a_bigger_pool_never_raises_a_line(period, more):
    segments, shares = period
    allowance = pooled(shares, _of(segments))
    assert allowance is not None
    before = _lines(segments, allowance)
    after = _lines(segments, Allowance(allowance.inputs + more, allowance.source))
    for line, amount in after.items():
        assert amount <= before[line]
    assert sum(after.values()) <= sum(before.values())


@settings(max_examples=150, deadline=None)
@given(periods(), st.data())
def test_more_usage_never_lowers_a_line(period, data):
    segments, shares = period
    allowance = pooled(shares, _of(segments))
    before = _lines(segments, allowance)
    plan = data.draw(st.sampled_from(list(segments)))
    tier = data.draw(st.sampled_from(MODEL_TIERS))
    grown = {p: PlanUsage(dict(u.inputs), u.tokens) for p, u in segments.items()}
    grown[plan].inputs[tier] += data.draw(st.integers(1, 2_000_000))
    after = _lines(grown, allowance)
    for line, amount in before.items():
        assert after.get(line, 0) >= amount


@settings(max_examples=150, deadline=None)
@given(periods())
def test_the_pool_covers_what_it_can_and_no_more(period):
    """Past the pool: every input beyond it, whichever plan it was made on, and none
    while it lasts. (Checked on the quantities of lines with a price: a tier without one
    has no line.)"""
    segments, shares = period
    free = {
        plan: PlanUsage(dict(usage.inputs), 0) for plan, usage in segments.items()
    }  # (fine-tuning aside)
    for plan in free:
        plan.overage_tiers = {tier: [{"up_to": None, "unit_amount": "1000"}]
                              for tier in MODEL_TIERS}  # fmt: skip
    allowance = pooled(shares, _of(free))
    assert allowance is not None
    used = sum(sum(usage.inputs.values()) for usage in free.values())
    past = sum(line.quantity for lines in rate_usage(free, allowance).values() for line in lines)
    assert past == max(used - allowance.inputs, 0)


@settings(max_examples=100, deadline=None)
@given(plans("solo"), st.integers(0, 4_000_000), st.integers(0, 4_000_000), st.integers(0, 10**6))
def test_one_plan_for_the_whole_period_is_priced_as_before_pooling(plan, standard, int8, tokens):
    usage = {plan: PlanUsage({"standard": standard, "int8": int8}, tokens)}
    whole = pooled({plan.pk: Fraction(1)}, lambda _: plan)
    assert whole == Allowance(plan.included_inputs, "")
    assert rate_usage(usage, whole) == rate_usage(usage, None)
