"""The margins page, the pricing simulator and ``simulate_pricing`` as an operator meets
them: who may open them, which ranges and price tables they take, and what they show."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command

from billing.periods import billing_period_record
from economics.selectors import BASE_FEE, margin_totals, margins, pricing_simulate
from metering.services import usage_record_bulk
from tests.factories import TenantFactory, subscribe

pytestmark = pytest.mark.django_db
MARGINS = "/admin/economics/usagerollup/margins/"
SIMULATE = "/admin/economics/usagerollup/simulate/"
NOV = datetime(2025, 11, 1, tzinfo=UTC)  # 30 days
DEC = datetime(2025, 12, 1, tzinfo=UTC)
JAN = datetime(2026, 1, 1, tzinfo=UTC)


def event(tenant, n, inputs, cost, *, at, model="minilm-l6", kind="inference", live=True):
    return {
        "v": 1, "event_id": f"req_o{tenant.pk}{n}", "kind": kind, "tenant_id": tenant.pk,
        "api_key_id": "key_a", "livemode": live, "model": model, "inputs": inputs,
        "tokens": inputs * 10, "compute_ms": 1.0, "cached": 0, "occurred_at": at.isoformat(),
        "cost_micros": str(cost), "pool": "cpu",
    }  # fmt: skip


def on_plan(tenant, slug, start, end):
    """The tenant's subscription moved to ``slug`` for [start, end), recorded as billing
    records it (a later period cuts an earlier one short where it begins). NOTE: its plan
    spans are not: a tenant's first period writes one, so a later change leaves spans that
    disagree with the periods, and its months are priced by runs of periods, as before
    spans were kept (``economics.plan_months``; test_plan_months has them with spans)."""
    from billing.models import Subscription
    from plans.models import Plan

    sub = Subscription.objects.for_tenant(tenant).first() or subscribe(tenant, slug)
    sub.plan = Plan.objects.get(slug=slug, is_current=True)
    sub.current_period_start, sub.current_period_end = start, end
    sub.save()
    billing_period_record(sub=sub)


def rows_on_page(client, start, end, by="tenant"):
    page = client.get(MARGINS, {"start": start, "end": end, "by": by})
    assert page.status_code == 200
    return {row[by]: row for row in page.context["rows"]}


@pytest.fixture
def nov_ledger():
    """A pro tenant calling in November (over its included inputs), a free one calling a
    little (a few micro-dollars of cost)."""
    pro, free = TenantFactory(name="Acme Robotics"), TenantFactory(name="Tiny Shop")
    subscribe(pro, "pro")
    usage_record_bulk(
        events=[event(pro, 1, 60_000, 40_000, at=NOV + timedelta(days=4)),
                event(pro, 2, 60_000, 40_000, at=NOV + timedelta(days=20)),
                event(free, 1, 1, 10, at=NOV + timedelta(days=6))]
    )  # fmt: skip
    return pro, free


# 1. Permission -----------------------------------------------------------------------------


def test_staff_without_the_permission_to_view_rollups_get_403(client, nov_ledger):
    from django.contrib.auth.models import Permission, User

    staff = User.objects.create_user("ops", password="x", is_staff=True)
    client.force_login(staff)
    assert client.get(MARGINS).status_code == 403
    assert client.get(SIMULATE).status_code == 403
    assert client.post(SIMULATE, {"prices": '{"pro": {"base_fee": 1}}'}).status_code == 403
    staff.user_permissions.add(
        Permission.objects.get(codename="view_usagerollup", content_type__app_label="economics")
    )
    staff = User.objects.get(pk=staff.pk)  # (permissions are cached on the user)
    client.force_login(staff)
    page = client.get(MARGINS, {"start": "2025-11-01", "end": "2025-12-01"})
    assert page.status_code == 200 and b"Acme Robotics" in page.content
    assert client.get(SIMULATE).status_code == 200


# 2. Whole UTC days -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "start", ["2025-11-01T12:00", "2025-11-01T00:00+05:00", "2025-11-01T00:00:00.5Z"]
)
def test_a_range_with_a_time_of_day_is_refused_with_a_message(admin_client, nov_ledger, start):
    page = admin_client.get(MARGINS, {"start": start, "end": "2025-12-01"})
    assert page.status_code == 200
    assert b"not a whole UTC day" in page.content and page.context["rows"] == []
    assert b"Dates (ISO 8601, 2026-11-01)" in page.content  # the hint says dates
    sim = admin_client.post(SIMULATE, {"start": start, "end": "2025-12-01",
                                       "prices": '{"pro": {"base_fee": 3900}}'})  # fmt: skip
    assert b"not a whole UTC day" in sim.content and b"TOTAL" not in sim.content
    with pytest.raises(CommandError, match="not a whole UTC day"):
        call_command("simulate_pricing", "--start", start, "--end", "2025-12-01",
                     "--prices", "/nonexistent")  # fmt: skip


def test_midnight_utc_in_any_spelling_is_a_whole_day(admin_client, nov_ledger):
    pro, _ = nov_ledger
    as_dates = rows_on_page(admin_client, "2025-11-01", "2025-12-01")
    spelled = rows_on_page(admin_client, "2025-11-01T05:00+05:00", "2025-12-01T00:00Z")
    assert spelled[pro.pk]["revenue_micros"] == as_dates[pro.pk]["revenue_micros"]


def test_two_adjacent_date_ranges_add_up_to_their_union(admin_client, nov_ledger):
    pro, free = nov_ledger
    whole = rows_on_page(admin_client, "2025-11-01", "2025-12-01")
    first = rows_on_page(admin_client, "2025-11-01", "2025-11-11")
    second = rows_on_page(admin_client, "2025-11-11", "2025-12-01")
    for tenant in (pro, free):
        for name in ("revenue_micros", "cost_micros", "requests", "inputs"):
            parts = [half[tenant.pk][name] if tenant.pk in half else 0 for half in (first, second)]
            assert sum(parts) == whole[tenant.pk][name], (tenant, name)
    # 4,900 + 20,000 inputs over the included 100,000 at 40 per 1,000 (800) = 5,700 cents.
    assert whole[pro.pk]["revenue_micros"] == 57_000_000


# 3. Currencies -----------------------------------------------------------------------------


@pytest.fixture
def two_currencies():
    """A tenant on a yen plan, one on pro (dollars), calling the same model."""
    from plans.models import Plan

    Plan.objects.create(id="yen@1", slug="yen", name="Yen", currency="jpy", base_fee=4_900)
    yen, usd = TenantFactory(name="Tokyo KK"), TenantFactory(name="Ohio Inc")
    subscribe(yen, "yen")
    subscribe(usd, "pro")
    usage_record_bulk(events=[event(yen, 1, 10, 7, at=NOV + timedelta(days=3)),
                              event(usd, 1, 10, 5, at=NOV + timedelta(days=3))])  # fmt: skip
    return yen, usd


def test_revenue_in_two_currencies_is_never_added_and_yen_gets_no_dollar_margin(
    admin_client, two_currencies
):
    yen, usd = two_currencies
    by_tenant = rows_on_page(admin_client, "2025-11-01", "2025-12-01")
    assert by_tenant[yen.pk]["currency"] == "jpy"
    assert by_tenant[yen.pk]["revenue_micros"] == 4_900 * 1_000_000  # 4,900 yen
    assert by_tenant[yen.pk]["cost_micros"] == 7  # micro-dollars: shown, apart
    assert by_tenant[yen.pk]["margin_micros"] is None
    assert "revenue is in jpy, cost in usd" in by_tenant[yen.pk]["no_margin"]
    assert by_tenant[usd.pk]["margin_micros"] == 49_000_000 - 5  # 4,900 cents - 5 micro-$
    # One model, two lines: one per revenue currency, never their sum.
    page = admin_client.get(MARGINS, {"start": "2025-11-01", "end": "2025-12-01", "by": "model"})
    lines = [(r["model"], r["currency"], r["revenue_micros"]) for r in page.context["rows"]]
    assert sorted(lines) == [("minilm-l6", "jpy", 4_900_000_000), ("minilm-l6", "usd", 49_000_000)]
    totals = {t["currency"]: t for t in page.context["totals"]}
    assert totals["usd"]["revenue_micros"] == 49_000_000 and totals["usd"]["margin_micros"]
    assert totals["jpy"]["revenue_micros"] == 4_900_000_000
    assert totals["jpy"]["margin_micros"] is None
    assert b"TOTAL jpy" in page.content and b"TOTAL usd" in page.content
    assert b"jpy: no margin: revenue is in jpy, cost in usd" in page.content


def test_the_simulator_totals_each_currency_apart(admin_client, two_currencies):
    yen, usd = two_currencies
    report = pricing_simulate(start=NOV, end=DEC, proposed={"yen": {"base_fee": 3_000}})
    assert report["total"] is None  # two currencies: no single total
    assert report["totals"]["usd"]["actual_revenue_micros"] == 49_000_000
    assert report["totals"]["jpy"]["simulated_revenue_micros"] == 3_000_000_000
    assert report["totals"]["jpy"]["simulated_margin_micros"] is None
    assert report["tenants"][yen.pk]["actual_margin_micros"] is None
    assert report["tenants"][usd.pk]["actual_margin_micros"] == Decimal(49_000_000 - 5)
    page = admin_client.post(SIMULATE, {"start": "2025-11-01", "end": "2025-12-01",
                                        "prices": '{"yen": {"base_fee": 3000}}'})  # fmt: skip
    text = page.content.decode()
    total_jpy = next(line for line in text.splitlines() if line.startswith("TOTAL jpy"))
    assert "4,900.0000" in total_jpy and "3,000.0000" in total_jpy and "n/a" in total_jpy
    assert "no margin: revenue is in jpy, cost in usd" in text


# 4. Base fees of every paid billing period -------------------------------------------------


def test_a_base_fee_charged_for_a_period_cut_short_the_same_day_still_counts(admin_client):
    """Free, then pro on the 29th (Stripe charged 4,900), then free again that afternoon:
    November earns pro's fee, and its halves add up to it; December earns none."""
    tenant = TenantFactory(name="Flip Flop")
    on_plan(tenant, "free", NOV, DEC)
    on_plan(tenant, "pro", NOV + timedelta(days=28, hours=10), DEC + timedelta(days=28, hours=10))
    on_plan(tenant, "free", NOV + timedelta(days=28, hours=15), DEC)
    usage_record_bulk(events=[{**event(tenant, 1, 10, 3, at=NOV + timedelta(days=2)),
                               "plan_id": "free@1"}])  # fmt: skip
    november = rows_on_page(admin_client, "2025-11-01", "2025-12-01")
    assert november[tenant.pk]["revenue_micros"] == 49_000_000
    by_model = rows_on_page(admin_client, "2025-11-01", "2025-12-01", by="model")
    assert by_model[BASE_FEE]["revenue_micros"] == 49_000_000
    halves = [rows_on_page(admin_client, *r)[tenant.pk]["revenue_micros"]
              for r in (("2025-11-01", "2025-11-16"), ("2025-11-16", "2025-12-01"))]  # fmt: skip
    assert halves == [24_500_000, 24_500_000]
    assert tenant.pk not in rows_on_page(admin_client, "2025-12-01", "2026-01-01")


def test_a_renewing_subscription_pays_once_a_month_and_a_second_signup_twice(admin_client):
    steady, again = TenantFactory(), TenantFactory()
    anchor = NOV + timedelta(days=28)  # the 29th
    on_plan(steady, "pro", anchor, anchor + timedelta(days=30))
    on_plan(steady, "pro", anchor + timedelta(days=30), anchor + timedelta(days=61))
    # Pro, left for free on the 10th, pro again on the 20th: two charges in November.
    on_plan(again, "pro", NOV, DEC)
    on_plan(again, "free", NOV + timedelta(days=9), DEC)
    on_plan(again, "pro", NOV + timedelta(days=19), DEC + timedelta(days=19))
    december = rows_on_page(admin_client, "2025-12-01", "2026-01-01")
    assert december[steady.pk]["revenue_micros"] == 49_000_000  # one run, one fee
    november = rows_on_page(admin_client, "2025-11-01", "2025-12-01")
    # Its span says when it began: November earns its 2 days of 30 (4,900 x 2/30 = 327).
    assert november[steady.pk]["revenue_micros"] == 3_270_000
    assert november[again.pk]["revenue_micros"] == 2 * 49_000_000


# 5. Nothing an operator types is a 500 -----------------------------------------------------


@pytest.mark.parametrize("moment", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00+23:59"])
def test_a_moment_outside_the_calendar_in_utc_is_refused(admin_client, moment):
    page = admin_client.get(MARGINS, {"start": moment})
    assert page.status_code == 200 and b"outside the years 0001 to 9999" in page.content
    sim = admin_client.post(SIMULATE, {"end": moment, "prices": "{}"})
    assert sim.status_code == 200 and b"outside the years 0001 to 9999" in sim.content
    with pytest.raises(CommandError, match="outside the years"):
        call_command("simulate_pricing", "--start", moment, "--end", "2025-12-01",
                     "--prices", "/nonexistent")  # fmt: skip


def test_a_price_table_nested_50000_deep_is_refused(admin_client, tmp_path):
    deep = "[" * 50_000 + "]" * 50_000
    page = admin_client.post(SIMULATE, {"prices": deep})
    assert page.status_code == 200 and b"nested too deeply" in page.content
    prices = tmp_path / "prices.json"
    prices.write_text(deep)
    with pytest.raises(CommandError, match="nested too deeply"):
        call_command("simulate_pricing", "--start", "2025-11-01", "--end", "2025-12-01",
                     "--prices", str(prices))  # fmt: skip


@pytest.mark.parametrize(
    "terms",
    [{"overage_tiers": {"standard": [{"up_to": None, "unit_amount": "1e40"}]}},
     {"finetune_unit_amount": "1e30"}],
)  # fmt: skip
def test_absurd_amounts_are_refused_not_a_traceback(admin_client, nov_ledger, tmp_path, terms):
    """Refused by the plans app's bounds, or, past them, as prices the engine cannot
    price: either way a message on the page and from the command."""
    pro, _ = nov_ledger
    usage_record_bulk(events=[event(pro, 9, 500, 9, at=NOV + timedelta(days=5),
                                    kind="fine_tune")])  # fmt: skip
    page = admin_client.post(SIMULATE, {"start": "2025-11-01", "end": "2025-12-01",
                                        "prices": json.dumps({"pro": terms})})  # fmt: skip
    assert page.status_code == 200
    assert b"errornote" in page.content and b"TOTAL" not in page.content
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"pro": terms}))
    with pytest.raises(CommandError):
        call_command("simulate_pricing", "--start", "2025-11-01", "--end", "2025-12-01",
                     "--prices", str(prices))  # fmt: skip


def test_amounts_past_the_checks_that_the_engine_cannot_price_are_a_message(nov_ledger):
    """Should a price pass the plans app's bounds and still overflow the rating engine's
    Decimals, the simulator says so rather than raising."""
    from economics.simulation import simulation_report

    pro, _ = nov_ledger
    usage_record_bulk(events=[event(pro, 9, 500, 9, at=NOV + timedelta(days=5),
                                    kind="fine_tune")])  # fmt: skip
    with pytest.raises(ValueError, match="cannot be priced"):
        simulation_report(start=NOV, end=DEC,
                          proposed={"pro": {"finetune_unit_amount": Decimal("1e30")}})  # fmt: skip


# 6. Wide ranges ----------------------------------------------------------------------------


def test_a_range_wider_than_ten_years_is_refused(admin_client, tmp_path):
    page = admin_client.get(MARGINS, {"start": "0001-01-01", "end": "9999-12-31"})
    assert page.status_code == 200 and b"at most 10 years" in page.content
    assert b"(0001-01-01 to 9999-12-31)" in page.content  # year 1 read "1-01-01"
    prices = tmp_path / "prices.json"
    prices.write_text("{}")
    with pytest.raises(CommandError, match="at most 10 years"):
        call_command("simulate_pricing", "--start", "0001-01-01", "--end", "9999-12-31",
                     "--prices", str(prices))  # fmt: skip


def test_billing_periods_are_read_once_however_wide_the_range(
    admin_client, nov_ledger, django_assert_max_num_queries
):
    tenant = TenantFactory()
    month = datetime(2020, 1, 1, tzinfo=UTC)
    for _ in range(60):  # five years of monthly periods
        following = (month + timedelta(days=32)).replace(day=1)
        on_plan(tenant, "pro", month, following)
        month = following
    with django_assert_max_num_queries(20):
        ten_years = rows_on_page(admin_client, "2016-01-01", "2026-01-01")
    assert ten_years[tenant.pk]["revenue_micros"] == 60 * 49_000_000
    with django_assert_max_num_queries(8):  # the selector alone, over the whole calendar
        rows = margins(start=datetime(1, 1, 1, tzinfo=UTC), end=JAN, by="tenant")
    assert {r["tenant"] for r in rows} >= {tenant.pk}


# 7. The simulator page ---------------------------------------------------------------------


def test_the_simulator_uses_the_period_entered_and_shows_small_costs_and_names(
    admin_client, nov_ledger
):
    pro, free = nov_ledger
    page = admin_client.post(SIMULATE, {"start": "2025-11-01", "end": "2025-12-01",
                                        "prices": '{"pro": {"base_fee": 3900}}'})  # fmt: skip
    text = page.content.decode()
    assert "pricing simulation 2025-11-01 .. 2025-12-01" in text
    line = next(line for line in text.splitlines() if free.pk in line)
    assert line.startswith(f"Tiny Shop ({free.pk})")
    # 10 micro-dollars of cost and a margin of minus that: visible, never "0.0000".
    assert "0.0000100" in line and "-0.0000100" in line
    assert "-0.0000 " not in text and " 0.0000 " not in text
    assert f"Acme Robotics ({pro.pk})" in text
    # Another period entered on the page is the one simulated.
    december = admin_client.post(SIMULATE, {"start": "2025-12-01", "end": "2026-01-01",
                                            "prices": '{"pro": {"base_fee": 3900}}'})  # fmt: skip
    assert b"pricing simulation 2025-12-01 .. 2026-01-01" in december.content
    assert b"Tiny Shop" not in december.content  # no call in December


# 8. Fine-tuning apart ----------------------------------------------------------------------


def test_fine_tuning_is_counted_apart_from_classification(admin_client, nov_ledger):
    pro, _ = nov_ledger
    usage_record_bulk(events=[event(pro, 3, 5_000, 900_000, at=NOV + timedelta(days=8),
                                    kind="fine_tune")])  # fmt: skip
    row = rows_on_page(admin_client, "2025-11-01", "2025-12-01")[pro.pk]
    assert row["requests"] == 2 and row["inputs"] == 120_000  # classifications only
    assert row["finetunes"] == 1 and row["trained_tokens"] == 50_000
    assert row["finetune_cost_micros"] == 900_000 and row["cost_micros"] == 980_000
    assert row["cost_per_call_micros"] == 40_000  # a classification's, not skewed by training
    # 5,700 + 50,000 trained tokens at 0.5 per 1,000 (25 cents).
    assert row["revenue_micros"] == 57_250_000
    page = admin_client.get(MARGINS, {"start": "2025-11-01", "end": "2025-12-01"})
    assert b"<th>fine-tunes</th>" in page.content and b"<th>classifications</th>" in page.content


# 9. Test-mode cost -------------------------------------------------------------------------


def test_test_mode_cost_is_shown_apart_and_left_out_of_the_margin(admin_client, nov_ledger):
    pro, _ = nov_ledger
    before = rows_on_page(admin_client, "2025-11-01", "2025-12-01")[pro.pk]
    usage_record_bulk(events=[event(pro, 4, 50, 777, at=NOV + timedelta(days=9), live=False)])
    page = admin_client.get(MARGINS, {"start": "2025-11-01", "end": "2025-12-01"})
    row = {r["tenant"]: r for r in page.context["rows"]}[pro.pk]
    assert row["test_cost_micros"] == 777
    assert row["margin_micros"] == before["margin_micros"]
    assert row["requests"] == before["requests"] and row["cost_micros"] == before["cost_micros"]
    (usd,) = margin_totals(page.context["rows"])
    assert usd["test_cost_micros"] == 777
    assert b"test-mode cost" in page.content


@pytest.mark.parametrize(
    ("first", "last", "fee"), [("pro@1", "free@1", 0), ("free@1", "pro@1", 4900)]
)
def test_the_plan_a_month_ends_on_is_its_last_calls_whatever_the_rollups_order(
    admin_client, first, last, fee
):
    """A month without billing periods pays its last call's plan's fee. A day's rollups were
    ordered by id, and a rebuild creates them in another order than the consumer did: the
    same month read $0.00, then $49.00 after `rebuild_rollups`."""
    tenant = TenantFactory(name="Kappa")
    day = datetime(2025, 11, 25, tzinfo=UTC)
    for n, (plan_id, hour) in enumerate(((first, 9), (last, 18))):
        usage_record_bulk(events=[{**event(tenant, n, 1, 10, at=day + timedelta(hours=hour)),
                                   "plan_id": plan_id}])  # fmt: skip
    before = rows_on_page(admin_client, "2025-11-01", "2025-12-01")[tenant.pk]
    call_command("rebuild_rollups")
    after = rows_on_page(admin_client, "2025-11-01", "2025-12-01")[tenant.pk]
    assert before["revenue_micros"] == after["revenue_micros"] == fee * 10_000


def test_the_margins_page_groups_its_figures_for_reading(admin_client, nov_ledger):
    """67170000 read as a number to count the digits of."""
    page = admin_client.get(MARGINS, {"start": "2025-11-01", "end": "2025-12-01", "by": "tenant"})
    assert "57,000,000" in page.content.decode()
