"""A period's included inputs are shared by the plans the tenant was on in it, each its part
by the time on it, as Stripe prorates the fees, and pooled: together they cover the period's
usage on every plan, the dearest first. A move to scale for the last day of the period
bought scale's 2,000,000 included inputs for a day's fee (worth ~800 USD of pro's overage),
and a move down after using a plan's whole allowance kept it all for a credit of most of its
fee; and with each plan's share covering only the usage made on it, a move up 26 seconds
into the period, or a price cut, raised the charge for the inputs already made (31 -> 64
cents, 393 -> 443). Hand-built periods and spans; the API and Stripe in test_invoicing."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest

from billing.models import BillingPeriod, PlanSpan
from billing.periods import plan_shares
from billing.rating import rate_tenant_period
from billing.usage_pricing import range_charges, range_row_charges
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


def _usage(tenant, inputs: int, plan_id: str, day: float, model: str = "minilm-l6") -> None:
    ledger_row(
        event_id=f"req_{uuid.uuid4().hex}", kind="inference", tenant=tenant, api_key_id="key_x",
        livemode=True, model=model, inputs=inputs, tokens=inputs * 10, compute_ms=1.0,
        occurred_at=START + timedelta(days=day), plan_id=plan_id,
    )  # fmt: skip


def _standard(tenant, plan_id: str) -> int:
    rated = rate_tenant_period(
        tenant=tenant, plan=Plan.objects.get(pk=plan_id), start=START, end=END,
        include_base_fee=False,
    )  # fmt: skip
    return sum(line.amount for line in rated.lines if line.key == "usage:standard")


def _price(plan_id: str) -> float:
    return float(Plan.objects.get(pk=plan_id).overage_tiers["standard"][0]["unit_amount"])


def test_a_move_up_for_the_last_day_buys_a_days_share_of_the_allowance(tenant):
    _period(tenant, "scale@1", (0, "pro@1"), (29, "scale@1"))
    assert plan_shares(tenant=tenant, start=START) == {
        "pro@1": Fraction(29, 30),
        "scale@1": Fraction(1, 30),
    }
    _usage(tenant, 90_000, "pro@1", day=10)  # within pro's 96,667
    _usage(tenant, 2_000_000, "scale@1", day=29.5)
    # Past the 96,667 + 66,667 included: pro's 6,667 unused cover scale's inputs too.
    overage = _standard(tenant, "scale@1")
    assert overage == round((2_000_000 - (96_667 + 66_667 - 90_000)) * _price("scale@1") / 1000)
    assert overage == 38_533  # all of it was included before spans were kept


def test_a_move_down_after_using_the_allowance_keeps_only_the_days_share(tenant):
    _period(tenant, "pro@1", (0, "scale@1"), (10, "pro@1"))  # scale for a third
    _usage(tenant, 1_900_000, "scale@1", day=5)
    # Past scale's 666,667 and pro's 66,667 (two thirds of its 100,000). Was 0: the whole
    # 2,000,000 covered it, for a third of scale's fee.
    overage = _standard(tenant, "pro@1")
    assert overage == round((1_900_000 - 666_667 - 66_667) * _price("scale@1") / 1000)


def _charge(tenant, plan_id: str) -> int:
    rated = rate_tenant_period(
        tenant=tenant, plan=Plan.objects.get(pk=plan_id), start=START, end=END,
        include_base_fee=False,
    )  # fmt: skip
    return rated.usage_total


def test_a_move_up_never_raises_the_charge_for_usage_made_before_it(tenant):
    """Pro's 150,000 inputs in the period's first minute (50,000 past its 100,000: 2,000
    cents), then a move to scale: the charge for them does not grow, however early the move
    (the 26 seconds' share of pro's allowance covered 1 input of them)."""
    _usage(tenant, 150_000, "pro@1", day=0.0002)
    _period(tenant, "pro@1", (0, "pro@1"))
    assert _charge(tenant, "pro@1") == 2_000
    PlanSpan.objects.create(tenant=tenant, start=START + timedelta(seconds=26), plan_id="scale@1")
    BillingPeriod.objects.filter(tenant=tenant).update(plan_id="scale@1")
    assert _charge(tenant, "scale@1") == 0  # scale's 2,000,000 for the rest cover them
    _usage(tenant, 3_000_000, "scale@1", day=20)
    scale_share = math.ceil(2_000_000 * Fraction(30 * 86_400 - 26, 30 * 86_400))
    left = 1 + scale_share - 150_000  # pro's inputs (dearer) covered first
    assert _charge(tenant, "scale@1") == round((3_000_000 - left) * _price("scale@1") / 1000)


def test_a_price_cut_mid_period_never_raises_the_charge(tenant):
    """Pro v1 for half the period, 150,000 inputs on it; then pro v2 (the same allowance,
    overage at 30 a thousand instead of 40). Each version's half of the allowance covering
    only its own usage charged 100,000 past 50,000; pooled, 50,000 past 100,000: what pro
    v1 alone charged."""
    v2 = Plan.objects.get(pk="pro@1")
    v2.pk, v2.id, v2.version, v2.is_current = "pro@9", "pro@9", 9, False
    v2.overage_tiers = {"standard": [{"up_to": None, "unit_amount": "30"}]}
    v2.save(force_insert=True)
    _usage(tenant, 150_000, "pro@1", day=3)
    _period(tenant, "pro@9", (0, "pro@1"), (15, "pro@9"))
    assert _charge(tenant, "pro@9") == 2_000  # 50,000 at 40
    _usage(tenant, 10_000, "pro@9", day=20)
    assert _charge(tenant, "pro@9") == 2_000 + 300  # and 10,000 at 30


def test_a_period_on_one_plan_keeps_its_whole_allowance(tenant):
    _period(tenant, "pro@1", (0, "pro@1"))
    assert plan_shares(tenant=tenant, start=START) == {"pro@1": Fraction(1)}
    _usage(tenant, 100_000, "pro@1", day=3)
    assert _standard(tenant, "pro@1") == 0
    # And with no span at all (periods from before spans were kept), as before.
    other_start = START - timedelta(days=30)
    BillingPeriod.objects.create(tenant=tenant, start=other_start, end=START, plan_id="pro@1")
    assert plan_shares(tenant=tenant, start=other_start) == {}


def test_usage_of_a_plan_with_no_time_in_the_period_is_covered_by_the_plans_that_had(tenant):
    """A call admitted on pro that lands in the free period after the move: priced at pro's
    rates, past free's included inputs (pro's own it had, in full, in its own period)."""
    _period(tenant, "free@1", (0, "free@1"))
    _usage(tenant, 1_000, "pro@1", day=0.001)
    assert _standard(tenant, "free@1") == 0  # within free's 10,000
    _usage(tenant, 9_500, "pro@1", day=0.002)
    assert _standard(tenant, "free@1") == round(500 * _price("pro@1") / 1000)


def test_a_span_before_the_period_says_which_plan_it_began_on(tenant):
    PlanSpan.objects.create(tenant=tenant, start=START - timedelta(days=40), plan_id="pro@1")
    _period(tenant, "scale@1", (15, "scale@1"))
    assert plan_shares(tenant=tenant, start=START) == {
        "pro@1": Fraction(1, 2),
        "scale@1": Fraction(1, 2),
    }


def test_a_report_by_model_gives_a_plans_grown_line_to_the_inputs_that_grew_it(tenant):
    """Scale for a day (66,667 included with pro's 96,667), 2,000,000 inputs on it; then,
    on pro, 100,000 int8 inputs (priced 24 a thousand, dearer than scale's 20: covered
    first) and a fine-tune. The int8 inputs take 100,000 of the included inputs scale's
    had: scale's line grows by 2,000 with no row of its own in the range, and the report
    gives it to the int8 model's row, not half of it to the fine-tune's."""
    _period(tenant, "pro@1", (0, "pro@1"), (14, "scale@1"), (15, "pro@1"))
    _usage(tenant, 2_000_000, "scale@1", day=14.5)
    _usage(tenant, 100_000, "pro@1", day=20, model="minilm-l6-int8")
    ledger_row(
        event_id=f"ft_{uuid.uuid4().hex}", kind="fine_tune", tenant=tenant, api_key_id="key_x",
        livemode=True, model="ft:minilm-l6:x:1", inputs=0, tokens=1_000_000, compute_ms=1.0,
        occurred_at=START + timedelta(days=21), plan_id="pro@1",
    )  # fmt: skip
    pro, after = Plan.objects.get(pk="pro@1"), START + timedelta(days=16)
    rows = range_row_charges(
        tenant=tenant, plan=pro, start=after, end=END, group="model", in_time_order=False
    )
    # 1,000,000 trained tokens at pro's 0.5 a thousand: 500.
    assert rows == {"minilm-l6-int8": 2_000, "ft:minilm-l6:x:1": 500}
    assert sum(range_charges(tenant=tenant, plan=pro, start=after, end=END).values()) == 2_500
