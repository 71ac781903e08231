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
from tests.factories import ledger_row, subscribe

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
    # Beyond a float's 53 bits a quotient in floating point is off by more units than
    # there are parts, and the largest-remainder step could not make the parts add up.
    total = 2**60 + 3
    parts = allocate(total, {"a": 1, "b": 2})
    assert parts == {"a": total // 3, "b": total - total // 3}


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


def _by(api, group_by, start, end):
    body = api.get("/v1/usage", {"group_by": group_by, "start": start, "end": end}).json()
    return {row[group_by]: row["amount"] for row in body["data"]}, body["total"]["amount"]


def test_a_days_amount_is_what_its_usage_adds_to_its_own_period(tenant, client_for):
    """The README's pro period of 15 September to 15 October, 60,000 inputs each side of
    1 October: by day, 20 September is inside the included inputs (as September's report
    says) and 5 October holds the 20,000 over; each day agrees with a report of that day."""
    sub = subscribe(tenant, "pro")
    sep15, oct15 = (datetime(2026, m, 15, 9, 30, tzinfo=UTC) for m in (9, 10))
    _period(sub, sep15, oct15)
    usage_record_bulk(
        events=[
            event(tenant, 1, inputs=60_000, occurred_at="2026-09-20T12:00:00+00:00"),
            event(tenant, 2, inputs=60_000, occurred_at="2026-10-05T12:00:00+00:00"),
        ]
    )
    api = client_for(tenant, ["billing"])
    days, total = _by(api, "day", "2026-09-01", "2026-11-01")
    assert days == {"2026-09-20": 0, "2026-10-05": 800} and total == 800
    for day, amount in days.items():
        alone = datetime.fromisoformat(day).replace(tzinfo=UTC)
        assert _by(api, "day", alone.isoformat(), (alone + timedelta(days=1)).isoformat()) == (
            {day: amount},
            amount,
        )
    assert _by(api, "day", "2026-09-01", "2026-10-01") == ({"2026-09-20": 0}, 0)
    assert _by(api, "day", "2026-10-01", "2026-11-01") == ({"2026-10-05": 800}, 800)


def test_a_day_in_a_period_whose_invoice_has_no_usage_charge_shows_none(tenant, client_for):
    """Two pro periods: 150,048 inputs in the first (50,048 over: 2,002), 50,016 in the
    second (inside its own 100,000). The second period's day shows no money, whatever
    range, grouping or the first period's overage."""
    sub = subscribe(tenant, "pro")
    sep15, oct15, nov15 = (datetime(2026, m, 15, tzinfo=UTC) for m in (9, 10, 11))
    _period(sub, sep15, oct15)
    _period(sub, oct15, nov15)
    usage_record_bulk(
        events=[
            event(tenant, 1, inputs=150_048, occurred_at="2026-09-20T12:00:00+00:00"),
            event(tenant, 2, inputs=50_016, occurred_at="2026-10-20T12:00:00+00:00"),
        ]
    )
    second = rate_tenant_period(tenant=tenant, plan=sub.plan, start=oct15, end=nov15)
    assert [line.key for line in second.lines] == ["base_fee"]  # no usage line
    api = client_for(tenant, ["billing"])
    assert _by(api, "day", sep15.isoformat(), nov15.isoformat()) == (
        {"2026-09-20": 2_002, "2026-10-20": 0},
        2_002,
    )
    assert _by(api, "model", sep15.isoformat(), nov15.isoformat()) == ({"minilm-l6": 2_002}, 2_002)
    assert _by(api, "day", oct15.isoformat(), nov15.isoformat()) == ({"2026-10-20": 0}, 0)


def test_models_and_keys_share_each_periods_charge_by_their_billable_part_in_it(tenant, client_for):
    """Rows that span the range (a model, an API key) are charged per period: model A's
    overage of the first period is A's alone, and the second period's 400 is shared by the
    two models' 60,000 and 50,000 inputs there, not by their inputs over both periods."""
    sub = subscribe(tenant, "pro")
    sep15, oct15, nov15 = (datetime(2026, m, 15, tzinfo=UTC) for m in (9, 10, 11))
    _period(sub, sep15, oct15)
    _period(sub, oct15, nov15)
    ft = "ft:minilm-l6:x:1"
    usage_record_bulk(
        events=[
            event(tenant, 1, inputs=150_000, occurred_at="2026-09-20T12:00:00+00:00"),
            event(tenant, 2, inputs=60_000, occurred_at="2026-10-20T12:00:00+00:00"),
            event(tenant, 3, inputs=50_000, occurred_at="2026-10-21T12:00:00+00:00", model=ft,
                  api_key_id="key_b"),
        ]
    )  # fmt: skip
    api = client_for(tenant, ["billing"])
    # First period 2,000 to A; second period 400 by 60,000 : 50,000 (218.18 : 181.82).
    by_model, total = _by(api, "model", sep15.isoformat(), nov15.isoformat())
    assert by_model == {"minilm-l6": 2_000 + 218, ft: 182} and total == 2_400
    by_key, total = _by(api, "api_key", sep15.isoformat(), nov15.isoformat())
    assert by_key == {"key_a": 2_218, "key_b": 182} and total == 2_400
    # A narrower report prices the second period's share alone.
    assert _by(api, "model", oct15.isoformat(), nov15.isoformat()) == (
        {"minilm-l6": 218, ft: 182},
        400,
    )


def test_free_usage_carries_no_money_in_any_row(tenant, client_for):
    """Within one pro period: cached inputs that the plan does not bill, and usage made on
    free before the upgrade, are no row's charge; the inputs that went over are."""
    Plan.objects.filter(slug="pro").update(cached_results_billed=False)
    sub = subscribe(tenant, "pro")
    _period(sub, datetime(2026, 9, 15, tzinfo=UTC), datetime(2026, 10, 15, tzinfo=UTC))
    free_plan = Plan.objects.get(slug="free", is_current=True)
    usage_record_bulk(
        events=[
            event(tenant, 1, inputs=150_000, cached=150_000,
                  occurred_at="2026-09-16T12:00:00+00:00", api_key_id="key_cached"),
            event(tenant, 2, inputs=110_000, occurred_at="2026-09-18T12:00:00+00:00",
                  model="ft:minilm-l6:x:1", api_key_id="key_paid"),
        ]
    )  # fmt: skip
    # Made on free (a row stamped before the upgrade), same period: free has no overage.

    ledger_row(
        event_id="req_on_free", kind="inference", tenant=tenant, api_key_id="key_free",
        livemode=True, model="minilm-l6", inputs=300_000, tokens=10, compute_ms=1.0,
        occurred_at=datetime(2026, 9, 17, 12, tzinfo=UTC), plan_id=free_plan.pk,
    )  # fmt: skip
    api = client_for(tenant, ["billing"])
    span = ("2026-09-15", "2026-10-15")
    # Pro's included 100,000 cover 100,000 of the 110,000 billable: 10,000 at 40 per 1k.
    assert _by(api, "day", *span) == (
        {"2026-09-16": 0, "2026-09-17": 0, "2026-09-18": 400},
        400,
    )
    assert _by(api, "api_key", *span) == (
        {"key_cached": 0, "key_free": 0, "key_paid": 400},
        400,
    )
    assert _by(api, "model", *span) == ({"minilm-l6": 0, "ft:minilm-l6:x:1": 400}, 400)


def test_rows_add_up_to_the_total_when_one_tier_takes_anothers_allowance(tenant, client_for):
    """Standard inputs in the range push int8 inputs from before it out of the included
    ones (dearest tier first): the int8 charge that appears is the range's, and its rows
    carry it."""
    sub = subscribe(tenant, "pro")
    _period(sub, datetime(2026, 9, 15, tzinfo=UTC), datetime(2026, 10, 15, tzinfo=UTC))
    usage_record_bulk(
        events=[
            event(tenant, 1, inputs=100_000, model="minilm-l6-int8",
                  occurred_at="2026-09-16T12:00:00+00:00"),
            event(tenant, 2, inputs=50_000, occurred_at="2026-09-20T12:00:00+00:00"),
        ]
    )  # fmt: skip
    api = client_for(tenant, ["billing"])
    # From 18 September: 50,000 standard covered, which leaves 50,000 int8 over (1,200).
    assert _by(api, "model", "2026-09-18", "2026-10-15") == ({"minilm-l6": 1_200}, 1_200)
    assert _by(api, "day", "2026-09-15", "2026-10-15") == (
        {"2026-09-16": 0, "2026-09-20": 1_200},
        1_200,
    )
