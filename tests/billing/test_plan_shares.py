"""A period's included inputs are shared by the plans the tenant was on in it, each its part
by the time on it, as Stripe prorates the fees: a move to scale for the last day of the
period bought scale's 2,000,000 included inputs for a day's fee (worth ~800 USD of pro's
overage), and a move down after using a plan's whole allowance kept it all for a credit
of most of its fee. Hand-built periods and spans; the API and Stripe in test_invoicing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest

from billing.models import BillingPeriod, PlanSpan
from billing.periods import plan_shares
from billing.rating import rate_tenant_period
from plans.models import Plan
from tests.factories import ledger_row

pytestmark = pytest.mark.django_db

START = datetime(2026, 10, 1, tzinfo=UTC)
END = datetime(2026, 10, 31, tzinfo=UTC)  # 30 days


def _period(tenant, plan_id: str, *spans: tuple[int, str]) -> None:
    """A recorded period on ``plan_id``, and spans (day of the period, plan) within it."""
    BillingPeriod.objects.create(tenant=tenant, start=START, end=END, plan_id=plan_id)
    for day, span_plan in spans:
        PlanSpan.objects.create(tenant=tenant, start=START + timedelta(days=day), plan_id=span_plan)


def _usage(tenant, inputs: int, plan_id: str, day: float) -> None:
    ledger_row(
        event_id=f"req_{uuid.uuid4().hex}", kind="inference", tenant=tenant, api_key_id="key_x",
        livemode=True, model="minilm-l6", inputs=inputs, tokens=inputs * 10, compute_ms=1.0,
        occurred_at=START + timedelta(days=day), plan_id=plan_id,
    )  # fmt: skip


def _standard(tenant, plan_id: str) -> int:
    rated = rate_tenant_period(
        tenant=tenant, plan=Plan.objects.get(pk=plan_id), start=START, end=END,
        include_base_fee=False,
    )  # fmt: skip
    return sum(line.amount for line in rated.lines if line.key == "usage:standard")


def test_a_move_up_for_the_last_day_buys_a_days_share_of_the_allowance(tenant):
    _period(tenant, "scale@1", (0, "pro@1"), (29, "scale@1"))
    assert plan_shares(tenant=tenant, start=START) == {
        "pro@1": Fraction(29, 30),
        "scale@1": Fraction(1, 30),
    }
    _usage(tenant, 90_000, "pro@1", day=10)  # within pro's 96,667
    _usage(tenant, 2_000_000, "scale@1", day=29.5)  # 1,933,333 past scale's 66,667
    overage = _standard(tenant, "scale@1")
    scale = Plan.objects.get(pk="scale@1").overage_tiers["standard"][0]["unit_amount"]
    assert overage == round((2_000_000 - 66_667) * float(scale) / 1000)
    assert overage > 0  # all of it was included before


def test_a_move_down_after_using_the_allowance_keeps_only_the_days_share(tenant):
    _period(tenant, "pro@1", (0, "scale@1"), (10, "pro@1"))  # scale for a third
    _usage(tenant, 1_900_000, "scale@1", day=5)  # 1,233,333 past scale's 666,667
    scale = Plan.objects.get(pk="scale@1").overage_tiers["standard"][0]["unit_amount"]
    # Was 0: the whole 2,000,000 covered it, for a third of scale's fee.
    assert _standard(tenant, "pro@1") == round((1_900_000 - 666_667) * float(scale) / 1000)


def test_a_period_on_one_plan_keeps_its_whole_allowance(tenant):
    _period(tenant, "pro@1", (0, "pro@1"))
    assert plan_shares(tenant=tenant, start=START) == {"pro@1": Fraction(1)}
    _usage(tenant, 100_000, "pro@1", day=3)
    assert _standard(tenant, "pro@1") == 0
    # And with no span at all (periods from before spans were kept), as before.
    other_start = START - timedelta(days=30)
    BillingPeriod.objects.create(tenant=tenant, start=other_start, end=START, plan_id="pro@1")
    assert plan_shares(tenant=tenant, start=other_start) == {}


def test_usage_of_a_plan_with_no_time_in_the_period_covers_none_of_its_inputs(tenant):
    """A call admitted on pro that lands in the free period after the move: billed at pro's
    rates, past none of pro's included inputs (it had them again, in full, in free's period)."""
    _period(tenant, "free@1", (0, "free@1"))
    _usage(tenant, 1_000, "pro@1", day=0.001)
    pro = Plan.objects.get(pk="pro@1").overage_tiers["standard"][0]["unit_amount"]
    assert _standard(tenant, "free@1") == round(1_000 * float(pro) / 1000)


def test_a_span_before_the_period_says_which_plan_it_began_on(tenant):
    PlanSpan.objects.create(tenant=tenant, start=START - timedelta(days=40), plan_id="pro@1")
    _period(tenant, "scale@1", (15, "scale@1"))
    assert plan_shares(tenant=tenant, start=START) == {
        "pro@1": Fraction(1, 2),
        "scale@1": Fraction(1, 2),
    }
