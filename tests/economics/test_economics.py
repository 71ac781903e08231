"""Margins and the pricing simulator on a hand-built ledger with answers worked by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from billing.periods import billing_period_record
from economics.models import UsageRollup
from economics.selectors import BASE_FEE, margins, pricing_simulate
from economics.services import rollups_rebuild
from metering.services import usage_record_bulk
from tests.factories import TenantFactory, subscribe

pytestmark = pytest.mark.django_db
NOW = datetime.now(UTC)
MONTH = NOW.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
NEXT = (MONTH + timedelta(days=32)).replace(day=1)


def event(tenant, n, inputs, cost, model="minilm-l6", at=None):
    return {
        "v": 1,
        "event_id": f"req_e{tenant.pk}{n}",
        "kind": "inference",
        "tenant_id": tenant.pk,
        "api_key_id": "key_a",
        "livemode": True,
        "model": model,
        "inputs": inputs,
        "tokens": inputs * 10,
        "compute_ms": 1.0,
        "cached": 0,
        "occurred_at": (at or NOW).isoformat(),
        "cost_micros": str(cost),
        "pool": "cpu",
    }


@pytest.fixture
def ledger():
    pro, free = TenantFactory(), TenantFactory()
    subscribe(pro, "pro")
    usage_record_bulk(
        events=[
            event(pro, 1, 100_000, 50_000),
            event(pro, 2, 500, 1_000, model="ft:minilm-l6:x:1"),
            event(free, 1, 10, 10),
        ]
    )
    return pro, free


def test_margin_by_tenant(ledger):
    pro, free = ledger
    rows = {r["tenant"]: r for r in margins(start=MONTH, end=NEXT, by="tenant")}
    # pro: base fee 4,900 + 500 inputs over the included 100,000 at 40 per 1k = 4,920 cents.
    assert rows[pro.pk]["revenue_micros"] == 49_200_000
    assert rows[pro.pk]["cost_micros"] == Decimal(51_000)
    assert rows[pro.pk]["margin_micros"] == Decimal(49_149_000)
    assert rows[pro.pk]["cost_per_call_micros"] == Decimal(25_500)
    assert rows[pro.pk]["margin_per_call_micros"] == Decimal(24_574_500)  # of 2 calls
    assert rows[free.pk]["revenue_micros"] == 0 and rows[free.pk]["margin_micros"] == -10
    assert rows[free.pk]["margin_pct"] is None


def test_margin_by_model_and_plan_add_up(ledger):
    by_model = margins(start=MONTH, end=NEXT, by="model")
    by_plan = {r["plan"]: r for r in margins(start=MONTH, end=NEXT, by="plan")}
    assert sum(r["revenue_micros"] for r in by_model) == 49_200_000
    assert by_plan["pro@1"]["revenue_micros"] == 49_200_000
    assert by_plan["free@1"]["cost_micros"] == Decimal(10)
    assert {r["model"] for r in by_model} == {"minilm-l6", "ft:minilm-l6:x:1"}


def test_a_fine_tunes_training_examples_take_no_share_of_the_base_fee():
    """By model, the fee was shared by inputs with a fine-tune's training examples counted
    as inputs: 3 classifications' model took most of a day's fee beside 28 of another."""
    from tests.factories import ledger_row

    tenant = TenantFactory()
    subscribe(tenant, "pro")
    common = {"tenant": tenant, "api_key_id": "key_a", "livemode": True, "occurred_at": NOW}
    ledger_row(event_id="req_f1", kind="inference", model="minilm-l6", inputs=100, tokens=1_000,
               compute_ms=1.0, **common)  # fmt: skip
    ledger_row(event_id="ftjob_f1", kind="fine_tune", model="ft:minilm-l6:x:2", inputs=300,
               tokens=3_000, compute_ms=10.0, **common)  # fmt: skip
    by_model = {r["model"]: r for r in margins(start=MONTH, end=NEXT, by="model")}
    fee = 49_000_000  # pro's whole month, all of it the classifications' model's
    assert by_model["minilm-l6"]["revenue_micros"] == fee
    assert 0 < by_model["ft:minilm-l6:x:2"]["revenue_micros"] < 1_000_000  # its training
    [row] = margins(start=MONTH, end=NEXT, by="tenant")  # a call's margin: training apart
    assert row["margin_per_call_micros"] == fee and row["revenue_micros"] > fee


def test_a_pool_priced_in_another_currency_adds_no_cost_and_says_so(caplog):
    """A worker pool priced in yen had its micro-yen added to the margins as dollars."""
    tenant = TenantFactory()
    usage_record_bulk(
        events=[
            {**event(tenant, 1, 10, 1_000), "cost_currency": "usd"},
            {**event(tenant, 2, 10, 13_853), "cost_currency": "jpy", "pool": "jpypool"},
            event(tenant, 3, 10, 7),  # an older worker's: no currency, COST_CURRENCY's
        ]
    )
    row = {r["tenant"]: r for r in margins(start=MONTH, end=NEXT, by="tenant")}[tenant.pk]
    assert row["cost_micros"] == Decimal(1_007) and row["requests"] == 3
    assert "'jpypool' prices its hardware in jpy, but COST_CURRENCY is usd" in caplog.text


def test_pricing_simulator_against_actual(ledger):
    pro, free = ledger
    report = pricing_simulate(
        start=MONTH, end=NEXT, proposed={"pro": {"base_fee": 3_900, "included_inputs": 50_000}}
    )
    mine = report["tenants"][pro.pk]
    # 3,900 + 50,500 inputs over at 40 per 1k (2,020) = 5,920 cents.
    assert mine["actual_revenue_micros"] == 49_200_000
    assert mine["simulated_revenue_micros"] == 59_200_000
    assert mine["simulated_margin_micros"] == Decimal(59_149_000)
    assert report["tenants"][free.pk]["simulated_revenue_micros"] == 0
    assert report["total"]["simulated_revenue_micros"] == 59_200_000
    assert report["total"]["cost_micros"] == Decimal(51_010)


def test_a_retired_plans_slug_still_reprices_its_tenants(ledger):
    """A plan no longer sold (no current version) had tenants in the period replayed: its
    slug proposes terms for them, as a plan on sale's does (it was an "unknown plan")."""
    from economics.simulation import proposed_validate
    from plans.models import Plan

    pro, _ = ledger
    Plan.objects.filter(slug="pro").update(is_current=False)
    proposed = proposed_validate({"pro": {"base_fee": 3_900, "included_inputs": 50_000}})
    report = pricing_simulate(start=MONTH, end=NEXT, proposed=proposed)
    assert report["tenants"][pro.pk]["simulated_revenue_micros"] == 59_200_000
    with pytest.raises(ValueError, match="unknown plan 'gone'"):
        proposed_validate({"gone": {"base_fee": 1}})


def test_rollups_follow_the_ledger_and_rebuild_identically(ledger):
    def snapshot():
        return sorted(
            (r.tenant_id, r.model, r.requests, r.inputs, r.cost_micros)
            for r in UsageRollup.objects.unscoped()
        )

    before = snapshot()
    assert len(before) == 3
    # A redelivered event changes nothing, in the ledger or the rollups.
    pro, _ = ledger
    usage_record_bulk(events=[event(pro, 1, 100_000, 50_000)])
    assert snapshot() == before
    assert rollups_rebuild() == 3
    assert snapshot() == before


def test_a_call_stays_under_the_plan_it_was_made_on(ledger):
    """Margins by plan follow the plan of each call, through a plan change and a rebuild."""
    from billing.models import Subscription
    from metering.models import UsageRecord
    from plans.models import Plan

    pro, _ = ledger
    sub = Subscription.objects.for_tenant(pro).get()
    on_pro = sub.plan_id
    sub.plan = Plan.objects.get(slug="scale", is_current=True)
    sub.save()
    usage_record_bulk(events=[event(pro, 3, 7, 5)])  # made on scale

    def plans_by_event():
        return dict(UsageRecord.objects.for_tenant(pro).values_list("event_id", "plan_id"))

    assert plans_by_event() == {
        f"req_e{pro.pk}1": on_pro, f"req_e{pro.pk}2": on_pro, f"req_e{pro.pk}3": sub.plan_id
    }  # fmt: skip

    def rollups():
        rows = UsageRollup.objects.for_tenant(pro)
        return sorted((r.plan_id, r.model, r.inputs) for r in rows)

    before = rollups()
    assert (on_pro, "minilm-l6", 100_000) in before and (sub.plan_id, "minilm-l6", 7) in before
    rollups_rebuild()
    assert rollups() == before


def test_simulate_command_and_admin_pages(ledger, tmp_path, admin_client, capsys):
    from django.core.management import call_command

    prices = tmp_path / "prices.json"
    prices.write_text('{"pro": {"base_fee": 3900}}')
    call_command(
        "simulate_pricing",
        "--start",
        MONTH.date().isoformat(),
        "--end",
        NEXT.date().isoformat(),
        "--prices",
        str(prices),
    )
    out = capsys.readouterr().out
    assert "TOTAL" in out and "49.2000" in out and "39.2000" in out
    page = admin_client.get("/admin/economics/usagerollup/margins/?by=model")
    assert page.status_code == 200 and b"minilm-l6" in page.content
    sim = admin_client.post(
        "/admin/economics/usagerollup/simulate/", {"prices": '{"pro": {"base_fee": 3900}}'}
    )
    assert sim.status_code == 200 and b"TOTAL" in sim.content
    bad = admin_client.post("/admin/economics/usagerollup/simulate/", {"prices": '{"gold": {}}'})
    assert b"unknown plan" in bad.content
    # A range without usage says so (it printed the header alone).
    before = (MONTH - timedelta(days=40)).date().isoformat()
    call_command("simulate_pricing", "--start", before, "--end", MONTH.date().isoformat(),
                 "--prices", str(prices))  # fmt: skip
    assert "No usage in this range" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("terms", "named"),
    [
        ({"overage_tiers": [1, 2]}, "overage_tiers"),
        ({"overage_tiers": {"gpu": [{"up_to": None, "unit_amount": "1"}]}}, "gpu"),
        ({"overage_tiers": {"standard": [{"up_to": None, "unit_amount": "-40"}]}}, "at least 0"),
        ({"overage_tiers": {"standard": [{"up_to": 10, "unit_amount": "40"}]}}, "last tier"),
        ({"overage_tiers": {"standard": [{"up_to": 9, "unit_amount": "4"},
                                         {"up_to": 5, "unit_amount": "3"},
                                         {"up_to": None, "unit_amount": "2"}]}}, "above 9"),
        ({"base_fee": "abc"}, "base_fee"),
        ({"base_fee": 39.99}, "base_fee"),  # a float is not money
        ({"included_inputs": -1000}, "included_inputs"),
        ({"finetune_unit_amount": "abc"}, "finetune_unit_amount"),
        ({"finetune_unit_amount": -1}, "finetune_unit_amount"),
        ({"cached_results_billed": "no"}, "cached_results_billed"),
    ],
)  # fmt: skip
def test_a_price_table_the_rating_engine_cannot_price_is_refused(
    ledger, admin_client, terms, named
):
    """By the simulator, in the admin and as a command, with the reason, never a 500."""
    import json

    from economics.simulation import proposed_validate

    with pytest.raises(ValueError, match=named):
        proposed_validate({"pro": terms})
    page = admin_client.post(
        "/admin/economics/usagerollup/simulate/", {"prices": json.dumps({"pro": terms})}
    )
    assert page.status_code == 200 and named.encode() in page.content


@pytest.mark.parametrize(
    "table",
    [
        {"free": {"included_inputs": 0, "overage_tiers": {
            "standard": [{"up_to": None, "unit_amount": "40000"}],
            "int8": [{"up_to": None, "unit_amount": "24000"}]}}},
        {"pro": {"base_fee": 0}},
        {"pro@1": {"base_fee": 0}},
    ],
)  # fmt: skip
def test_terms_that_charge_on_a_plan_without_a_fee_are_refused_as_the_admin_refuses_them(
    ledger, table
):
    """A plan without a base fee is never billed: the simulator counted its overage as
    revenue (13.60 USD from a free tenant) where the plans admin refuses the same terms."""
    from economics.simulation import proposed_validate

    with pytest.raises(ValueError, match="never billed"):
        proposed_validate(table)
    assert proposed_validate({"free": {"included_inputs": 0}})  # charges nothing: fine


def test_margins_price_usage_by_the_plan_it_was_made_on():
    """Pro's overage keeps its revenue after the tenant moved to scale in mid-month (whose
    included inputs would otherwise swallow it), as on the invoice."""
    from billing.models import Subscription
    from economics.selectors import _rows_with_money
    from plans.models import Plan

    tenant = TenantFactory()
    subscribe(tenant, "pro")
    usage_record_bulk(events=[event(tenant, 1, 150_000, 9)])  # 50,000 over pro's 100,000
    sub = Subscription.objects.for_tenant(tenant).get()
    sub.plan = Plan.objects.get(slug="scale", is_current=True)
    sub.save()
    usage_record_bulk(events=[event(tenant, 2, 1_000, 1)])
    rows = [(row.plan_id, revenue) for row, revenue, _ in _rows_with_money(MONTH, NEXT)
            if row.tenant_id == tenant.pk]  # fmt: skip
    revenue = dict(rows)
    assert revenue["pro@1"] == 2_000  # 50,000 x 40 per 1,000, and no base fee of its own
    assert revenue[sub.plan_id] > 0  # scale's base fee, prorated to the range


def test_the_margins_page_reads_offsets_and_says_what_it_cannot_read(ledger, admin_client):
    from economics.simulation import moment_parse

    assert moment_parse("2026-11-01T05:00+05:00") == datetime(2026, 11, 1, tzinfo=UTC)
    assert moment_parse("2026-11-01") == datetime(2026, 11, 1, tzinfo=UTC)
    garbage = admin_client.get("/admin/economics/usagerollup/margins/?start=garbage")
    assert garbage.status_code == 200 and b"ISO 8601" in garbage.content
    backwards = admin_client.get(
        "/admin/economics/usagerollup/margins/?start=2026-12-01&end=2026-11-01"
    )
    assert backwards.status_code == 200 and b"must be before end" in backwards.content


def test_a_paying_tenant_without_calls_still_earns_its_base_fee(ledger):
    """Margins and the simulator count the base fee of a month with no call in it."""
    pro, _ = ledger
    idle = TenantFactory()
    sub = subscribe(idle, "pro")
    # On pro the whole month (a month that began on pro earns its time on it alone).
    sub.current_period_start, sub.current_period_end = MONTH, NEXT
    billing_period_record(sub=sub)
    by_tenant = {r["tenant"]: r for r in margins(start=MONTH, end=NEXT, by="tenant")}
    assert by_tenant[idle.pk]["revenue_micros"] == 49_000_000  # the whole month: 4,900 cents
    assert by_tenant[idle.pk]["requests"] == 0 and by_tenant[idle.pk]["cost_micros"] == 0
    assert by_tenant[pro.pk]["revenue_micros"] == 49_200_000  # unchanged
    by_model = {r["model"]: r for r in margins(start=MONTH, end=NEXT, by="model")}
    assert by_model[BASE_FEE]["revenue_micros"] == 49_000_000
    by_day = margins(start=MONTH, end=NEXT, by="day")
    assert sum(r["revenue_micros"] for r in by_day) == 49_200_000 + 49_000_000
    by_plan = {r["plan"]: r for r in margins(start=MONTH, end=NEXT, by="plan")}
    assert by_plan["pro@1"]["revenue_micros"] == 49_200_000 + 49_000_000
    # Half the month: half the base fee.
    half = MONTH + (NEXT - MONTH) / 2
    first_half = {r["tenant"]: r for r in margins(start=MONTH, end=half, by="tenant")}
    assert first_half[idle.pk]["revenue_micros"] == 24_500_000
    report = pricing_simulate(start=MONTH, end=NEXT, proposed={"pro": {"base_fee": 3_900}})
    assert report["tenants"][idle.pk]["actual_revenue_micros"] == 49_000_000
    assert report["tenants"][idle.pk]["simulated_revenue_micros"] == 39_000_000
    assert report["total"]["simulated_revenue_micros"] == 39_200_000 + 39_000_000


def test_a_month_of_calls_on_free_then_an_upgrade_earns_the_paid_base_fee(ledger):
    """Calls on free, then pro from the middle of the month: pro's base fee is earned, as it
    is by a tenant that made no call at all."""
    busy = TenantFactory()
    sub = subscribe(busy, "free")
    sub.current_period_start, sub.current_period_end = MONTH, NEXT
    billing_period_record(sub=sub)
    usage_record_bulk(events=[{**event(busy, 1, 10, 10), "plan_id": "free@1"}])
    sub.plan_id = "pro@1"
    sub.current_period_start, sub.current_period_end = MONTH + timedelta(days=3), NEXT
    billing_period_record(sub=sub)
    rows = {r["tenant"]: r for r in margins(start=MONTH, end=NEXT, by="tenant")}
    assert rows[busy.pk]["revenue_micros"] == 49_000_000 and rows[busy.pk]["requests"] == 1
    by_model = {r["model"]: r for r in margins(start=MONTH, end=NEXT, by="model")}
    assert by_model[BASE_FEE]["revenue_micros"] == 49_000_000


NOV = datetime(2025, 11, 1, tzinfo=UTC)  # 30 days
DEC = datetime(2025, 12, 1, tzinfo=UTC)


def revenue_of(tenant, start, end):
    """The tenant's revenue in [start, end), in cents."""
    rows = margins(start=start, end=end, by="tenant")
    return sum(r["revenue_micros"] for r in rows if r["tenant"] == tenant.pk) // 10_000


def test_a_months_included_inputs_are_granted_once_whatever_the_range():
    """Pro: 100,000 inputs on the 5th use up the included inputs, so the 100,000 on the
    25th are overage (4,000 cents) in the whole month and in its second half alike: the
    halves add up to the month, in margins and in the simulator, as /v1/usage prices them."""
    from billing.usage_pricing import range_charges
    from plans.models import Plan

    tenant = TenantFactory()
    subscribe(tenant, "pro")
    pro = Plan.objects.get(slug="pro", is_current=True)
    usage_record_bulk(
        events=[event(tenant, 1, 100_000, 7, at=NOV + timedelta(days=4)),
                event(tenant, 2, 100_000, 7, at=NOV + timedelta(days=24))]
    )  # fmt: skip
    half = NOV + timedelta(days=15)
    assert revenue_of(tenant, NOV, DEC) == 4_900 + 4_000
    assert revenue_of(tenant, NOV, half) == 2_450  # half the base fee, no overage
    assert revenue_of(tenant, half, DEC) == 2_450 + 4_000  # the overage is the second half's
    for lo, hi in ((NOV, half), (half, DEC)):  # the usage part is what /v1/usage charges
        usage = sum(range_charges(tenant=tenant, plan=pro, start=lo, end=hi).values())
        assert revenue_of(tenant, lo, hi) == 2_450 + usage

    def simulated(lo, hi):
        report = pricing_simulate(start=lo, end=hi, proposed={"pro": {"included_inputs": 150_000}})
        mine = report["tenants"][tenant.pk]
        return mine["actual_revenue_micros"] // 10_000, mine["simulated_revenue_micros"] // 10_000

    assert simulated(NOV, DEC) == (8_900, 4_900 + 2_000)  # 50,000 over at 40 per 1,000
    assert simulated(NOV, half) == (2_450, 2_450)
    assert simulated(half, DEC) == (6_450, 2_450 + 2_000)


def test_a_range_pays_for_cheaper_inputs_its_dearer_ones_pushed_out_of_the_allowance():
    """60,000 int8 inputs on the 5th are covered; 60,000 standard inputs on the 25th take the
    included inputs first (the dearer tier), leaving 20,000 int8 inputs at 24 per 1,000 to
    pay: 480 cents, which the second half earns although it has no int8 call."""
    tenant = TenantFactory()
    subscribe(tenant, "pro")
    usage_record_bulk(
        events=[event(tenant, 1, 60_000, 7, model="minilm-l6-int8", at=NOV + timedelta(days=4)),
                event(tenant, 2, 60_000, 7, at=NOV + timedelta(days=24))]
    )  # fmt: skip
    half = NOV + timedelta(days=15)
    assert revenue_of(tenant, NOV, DEC) == 4_900 + 480
    assert revenue_of(tenant, NOV, half) == 2_450
    second = margins(start=half, end=DEC, by="model")
    assert {r["model"]: r["revenue_micros"] // 10_000 for r in second} == {"minilm-l6": 2_450 + 480}


@pytest.mark.parametrize(
    ("currency", "micros"), [("jpy", 1_000_000), ("usd", 10_000), ("bhd", 1_000)]
)
def test_revenue_in_micro_units_follows_the_currencys_minor_unit(currency, micros):
    """A base fee of 4,900 minor units is 4,900 yen, 49 dollars or 4.9 dinars."""
    from economics.selectors import micros_per_minor
    from plans.models import Plan

    assert micros_per_minor(currency) == micros
    Plan.objects.create(id=f"{currency}@1", slug=currency, name=currency, currency=currency,
                        base_fee=4_900)  # fmt: skip
    tenant = TenantFactory()
    subscribe(tenant, currency)
    usage_record_bulk(events=[event(tenant, 1, 10, 7, at=NOV + timedelta(days=4))])
    (row,) = [r for r in margins(start=NOV, end=DEC, by="tenant") if r["tenant"] == tenant.pk]
    assert row["revenue_micros"] == 4_900 * micros
    # Cost is in dollars: a margin only where the revenue is too (never yen minus dollars).
    expected = 4_900 * micros - 7 if currency == "usd" else None
    assert row["margin_micros"] == expected


def test_calls_without_a_subscription_are_stamped_with_the_current_free_version(monkeypatch):
    """After free gets a new version, the ledger and the rollups say the version that
    enforcement admitted the calls under, not free@1."""
    from limits import services as limits
    from metering.models import UsageRecord
    from plans.models import Plan

    free = Plan.objects.get(slug="free", is_current=True)
    Plan.objects.filter(pk=free.pk).update(is_current=False)
    Plan.objects.create(id="free@2", slug="free", version=2, name="Free", included_inputs=5_000,
                        monthly_hard_cap=5_000)  # fmt: skip
    monkeypatch.setitem(limits._free, "plan", None)  # enforcement's few seconds' cache
    monkeypatch.setitem(limits._free, "read_at", 0.0)
    tenant, subscribed = TenantFactory(), TenantFactory()
    subscribe(subscribed, "pro")
    usage_record_bulk(events=[event(tenant, 1, 3, 1), event(subscribed, 1, 3, 1)])
    assert limits.free_plan_current().id == "free@2"
    stamped = dict(UsageRecord.objects.unscoped().values_list("tenant_id", "plan_id"))
    assert stamped == {tenant.pk: "free@2", subscribed.pk: "pro@1"}
    assert UsageRollup.objects.for_tenant(tenant).get().plan_id == "free@2"


def test_a_rollups_day_is_the_utc_day_of_its_call():
    """2026-11-02T03:00+05:30 is 2026-11-01T21:30Z: the rollup's day is the 1st, as the
    ledger's (and /v1/usage's) is, and a rebuild agrees."""
    from datetime import date

    tenant = TenantFactory()
    local = datetime.fromisoformat("2026-11-02T03:00:00+05:30")
    usage_record_bulk(events=[event(tenant, 1, 7, 1, at=local)])
    assert list(UsageRollup.objects.for_tenant(tenant).values_list("day", flat=True)) == [
        date(2026, 11, 1)
    ]
    rollups_rebuild()
    assert list(UsageRollup.objects.for_tenant(tenant).values_list("day", flat=True)) == [
        date(2026, 11, 1)
    ]
