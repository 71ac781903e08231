"""The rating engine and usage amounts on hand-built ledgers with answers worked out by
hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from billing.periods import billing_period_record, billing_periods
from billing.rating import graduated, model_tier, rate, rate_tenant_period
from billing.usage_pricing import allocate
from metering.services import usage_record_bulk
from plans.models import Plan
from tests.factories import subscribe

NOW = datetime.now(UTC)
pytestmark = pytest.mark.django_db


def pro() -> Plan:
    return Plan.objects.get(slug="pro", is_current=True)


def rated(plan, standard=0, int8=0, tokens=0):
    return rate(
        plan=plan,
        inputs_by_tier={"standard": standard, "int8": int8},
        trained_tokens=tokens,
        period_start=NOW,
        period_end=NOW,
    )


def test_graduated_tiers():
    tiers = [{"up_to": 1_000_000, "unit_amount": "40"}, {"up_to": None, "unit_amount": "25"}]
    assert graduated(1_500_000, tiers) == 52_500  # 1M at 4c/100 + 0.5M at 2.5c/100
    assert graduated(1_000_000, tiers) == 40_000
    assert graduated(0, tiers) == 0


def test_included_inputs_then_overage_plus_base_fee():
    period = rated(pro(), standard=1_200_000)
    lines = {line.key: line.amount for line in period.lines}
    # 100,000 included; 1,000,000 at 40 per 1k; 100,000 at 25 per 1k.
    assert lines == {"base_fee": 4_900, "usage:standard": 42_500}
    assert period.total == 47_400 and period.usage_total == 42_500


def test_included_inputs_cover_the_dearest_tier_first():
    period = rated(pro(), standard=50_000, int8=80_000)
    # Included 100,000: all 50,000 standard, then 50,000 of int8; 30,000 int8 at 24 per 1k.
    assert {line.key: line.amount for line in period.lines} == {
        "base_fee": 4_900,
        "usage:int8": 720,
    }


def test_fine_tuning_tokens_and_half_up_rounding():
    period = rated(pro(), tokens=1_234_567)
    assert {line.key: line.amount for line in period.lines}["finetune"] == 617  # 617.28
    tiny = rated(pro(), standard=100_003)  # 3 inputs over: 0.12 minor units
    assert [line.key for line in tiny.lines] == ["base_fee"]


def test_free_plan_has_no_usage_charges():
    assert rated(Plan.objects.get(slug="free"), standard=999).total == 0


def test_allocation_always_adds_up():
    parts = allocate(100, {"a": 1, "b": 1, "c": 1})
    assert sum(parts.values()) == 100 and sorted(parts.values()) == [33, 33, 34]
    assert allocate(0, {"a": 5}) == {"a": 0}
    assert allocate(7, {}) == {}


def event(tenant, n, **fields):
    return {
        "v": 1,
        "event_id": f"req_r{n}",
        "kind": "inference",
        "tenant_id": tenant.pk,
        "api_key_id": "key_a",
        "livemode": True,
        "model": "minilm-l6",
        "inputs": 1,
        "tokens": 10,
        "compute_ms": 1.0,
        "cached": 0,
        "occurred_at": NOW.isoformat(),
        **fields,
    }


def test_usage_report_amounts_follow_the_plan_and_add_up(tenant, client_for):
    subscribe(tenant, "pro")
    usage_record_bulk(
        events=[
            event(tenant, 1, inputs=100_000),  # exactly the included inputs
            event(tenant, 2, inputs=300, model="minilm-l6"),
            event(tenant, 3, inputs=200, model="ft:minilm-l6:x:1", api_key_id="key_b"),
            event(tenant, 4, inputs=1_000, model="minilm-l6-int8"),
            event(tenant, 5, inputs=50, livemode=False),  # test mode: never charged
        ]
    )
    api = client_for(tenant, ["billing"])
    start = (NOW - timedelta(hours=1)).isoformat()
    body = api.get("/v1/usage", {"group_by": "model", "start": start}).json()
    # Included 100,000 cover the 100,500 standard inputs' first 100,000 (dearest tier
    # first): 500 standard over at 40/1k = 20; int8: 1,000 at 24/1k = 24.
    assert body["total"]["amount"] == 44 and body["currency"] == "usd"
    by_model = {row["model"]: row["amount"] for row in body["data"]}
    assert by_model["minilm-l6-int8"] == 24
    assert by_model["minilm-l6"] + by_model["ft:minilm-l6:x:1"] == 20
    assert sum(by_model.values()) == 44
    by_key = api.get("/v1/usage", {"group_by": "api_key", "start": start}).json()
    assert sum(row["amount"] for row in by_key["data"]) == 44
    test_mode = client_for(tenant, ["billing"], mode="test").get("/v1/usage", {"start": start})
    assert test_mode.json()["total"]["amount"] == 0


def test_a_range_is_priced_as_its_marginal_charge_in_the_month(tenant, client_for):
    if (NOW - timedelta(hours=1)).month != NOW.month:
        pytest.skip("the hand-built ledger would straddle two months")
    subscribe(tenant, "pro")
    earlier = (NOW - timedelta(minutes=30)).isoformat()
    usage_record_bulk(
        events=[
            event(tenant, 1, inputs=100_000, occurred_at=earlier),
            event(tenant, 2, inputs=1_000),
        ]
    )
    api = client_for(tenant, ["billing"])
    # The last 10 minutes hold only the 1,000 inputs beyond the included ones: 40 minor units.
    recent = api.get("/v1/usage", {"start": (NOW - timedelta(minutes=10)).isoformat()}).json()
    assert recent["total"]["inputs"] == 1_000 and recent["total"]["amount"] == 40
    if (NOW - timedelta(minutes=30)).month == NOW.month:
        older = api.get(
            "/v1/usage",
            {
                "start": (NOW - timedelta(hours=1)).isoformat(),
                "end": (NOW - timedelta(minutes=10)).isoformat(),
            },
        ).json()
        assert older["total"]["amount"] == 0  # inside the included inputs


def test_a_model_bills_at_its_base_models_tier():
    assert model_tier("minilm-l6") == "standard"
    assert model_tier("minilm-l6-int8") == "int8"
    assert model_tier("ft:minilm-l6-int8:tickets:ab12cd34") == "int8"  # an int8 variant
    assert model_tier("ft:minilm-l6:tickets:ab12cd34") == "standard"
    # A customer's suffix is not a price tier.
    assert model_tier("ft:minilm-l6:int8-trial:ab12cd34") == "standard"


def _period(sub, start, end):
    sub.current_period_start, sub.current_period_end = start, end
    sub.save()
    billing_period_record(sub=sub)


def test_usage_is_priced_in_the_billing_period_as_the_invoice_prices_it(tenant, client_for):
    """A pro period from 15 September to 15 October: 60,000 inputs each side of 1 October
    are 20,000 over the 100,000 included, as the invoice says, not two covered months."""
    sub = subscribe(tenant, "pro")
    sep15, oct15 = (
        datetime(2026, 9, 15, 9, 30, tzinfo=UTC),
        datetime(2026, 10, 15, 9, 30, tzinfo=UTC),
    )
    _period(sub, sep15, oct15)
    usage_record_bulk(
        events=[
            event(tenant, 1, inputs=60_000, occurred_at="2026-09-20T12:00:00+00:00"),
            event(tenant, 2, inputs=60_000, occurred_at="2026-10-05T12:00:00+00:00"),
        ]
    )
    invoice = rate_tenant_period(tenant=tenant, plan=sub.plan, start=sep15, end=oct15)
    assert {line.key: line.amount for line in invoice.lines}["usage:standard"] == 800
    api = client_for(tenant, ["billing"])
    whole = api.get("/v1/usage", {"start": "2026-09-01", "end": "2026-11-01"}).json()
    assert whole["total"]["inputs"] == 120_000 and whole["total"]["amount"] == 800
    # October's 60,000 come after September's 60,000 in the same period: 20,000 over.
    october = api.get("/v1/usage", {"start": "2026-10-01", "end": "2026-11-01"}).json()
    assert october["total"]["amount"] == 800
    september = api.get("/v1/usage", {"start": "2026-09-01", "end": "2026-10-01"}).json()
    assert september["total"]["amount"] == 0


def test_periods_without_a_record_are_calendar_months_cut_at_recorded_ones(tenant):
    sub = subscribe(tenant, "free")
    _period(sub, datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
    pro_start = datetime(2026, 11, 20, 10, tzinfo=UTC)
    _period(sub, pro_start, datetime(2026, 12, 20, 10, tzinfo=UTC))  # free cut short here
    spans = list(
        billing_periods(
            tenant=tenant,
            start=datetime(2026, 10, 15, tzinfo=UTC),
            end=datetime(2026, 12, 25, tzinfo=UTC),
        )
    )
    assert spans == [
        (datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)),
        (datetime(2026, 11, 1, tzinfo=UTC), pro_start),
        (pro_start, datetime(2026, 12, 20, 10, tzinfo=UTC)),
        (datetime(2026, 12, 20, 10, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),
    ]


def test_a_month_filled_in_after_a_period_begins_where_that_period_ended(tenant):
    """The renewal of 15 October not recorded yet: what follows the recorded period is
    priced from its end, not from 1 October again (which would count 5 October's usage
    against the included inputs a second time)."""
    from billing.usage_pricing import range_charges

    sub = subscribe(tenant, "pro")
    sep15, oct15 = datetime(2026, 9, 15, tzinfo=UTC), datetime(2026, 10, 15, tzinfo=UTC)
    _period(sub, sep15, oct15)
    usage_record_bulk(
        events=[
            event(tenant, 1, inputs=60_000, occurred_at="2026-10-05T12:00:00+00:00"),
            event(tenant, 2, inputs=60_000, occurred_at="2026-10-20T12:00:00+00:00"),
        ]
    )
    assert list(billing_periods(tenant=tenant, start=datetime(2026, 10, 16, tzinfo=UTC),
                                end=datetime(2026, 11, 1, tzinfo=UTC))) == [
        (oct15, datetime(2026, 11, 1, tzinfo=UTC))
    ]  # fmt: skip
    late = range_charges(tenant=tenant, plan=sub.plan, start=datetime(2026, 10, 16, tzinfo=UTC),
                         end=datetime(2026, 11, 1, tzinfo=UTC))  # fmt: skip
    whole = range_charges(tenant=tenant, plan=sub.plan, start=datetime(2026, 9, 1, tzinfo=UTC),
                          end=datetime(2026, 11, 1, tzinfo=UTC))  # fmt: skip
    assert late == whole  # each 60,000 within its own period's 100,000: nothing over
    assert sum(late.values()) == 0
