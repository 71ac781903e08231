"""Margins and the simulator through plan changes, agreeing with billing: a period's included
inputs shared by the plans the tenant was on in it, by the time on each, and each plan's
base fee earned for the time on it, as Stripe prorates it. Hand-built periods and spans
(``billing.PlanSpan``, as plan changes write them) with answers worked by hand; November
2025 has 30 days, December 31."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest

from billing.models import BillingPeriod, PlanSpan
from billing.periods import billing_period_record
from billing.rating import rate_tenant_period
from billing.usage_pricing import range_charges
from economics.plan_months import prorated
from economics.selectors import BASE_FEE, margins, pricing_simulate
from metering.services import usage_record_bulk
from plans.models import Plan
from tests.factories import TenantFactory, subscribe

pytestmark = pytest.mark.django_db
NOV = datetime(2025, 11, 1, tzinfo=UTC)
DEC = datetime(2025, 12, 1, tzinfo=UTC)
JAN = datetime(2026, 1, 1, tzinfo=UTC)


def day(n: int, month: datetime = NOV) -> datetime:
    """The first instant of the month's ``n``th day."""
    return month + timedelta(days=n - 1)


def calls(tenant, *made: tuple[int, str, datetime], keys: tuple[str, ...] = ("key_a",)) -> None:
    """Calls of ``inputs`` standard inputs each, made on a plan (id) at a moment, with
    ``keys`` in turn."""
    usage_record_bulk(
        events=[
            {"v": 1, "event_id": f"req_m{tenant.pk}-{n}", "kind": "inference",
             "tenant_id": tenant.pk, "api_key_id": keys[n % len(keys)], "livemode": True,
             "model": "minilm-l6", "inputs": inputs, "tokens": inputs * 10, "compute_ms": 1.0,
             "cached": 0, "occurred_at": (at + timedelta(hours=12)).isoformat(),
             "cost_micros": "7", "pool": "cpu", "plan_id": plan_id}
            for n, (inputs, plan_id, at) in enumerate(made)
        ]
    )  # fmt: skip


def recorded(tenant, periods, spans) -> None:
    """Billing periods (start, end, scheduled end or None, plan id) and plan spans (start,
    plan id), as billing records a tenant's plan changes."""
    for start, end, scheduled_end, plan_id in periods:
        BillingPeriod.objects.create(tenant=tenant, start=start, end=end,
                                     scheduled_end=scheduled_end, plan_id=plan_id)  # fmt: skip
    for start, plan_id in spans:
        PlanSpan.objects.create(tenant=tenant, start=start, plan_id=plan_id)


def revenue_of(tenant, start, end, by="tenant"):
    """Cents the margins page shows for the tenant in [start, end), per ``by`` line."""
    rows = margins(start=start, end=end, by=by)
    if by == "tenant":
        return sum(r["revenue_micros"] for r in rows if r["tenant"] == tenant.pk) // 10_000
    return {r[by]: r["revenue_micros"] // 10_000 for r in rows}


def billed_usage(tenant, start, end) -> int:
    """What billing charges for the usage of [start, end) (/v1/usage's figure)."""
    plan = Plan.objects.get(pk="pro@1")
    return sum(range_charges(tenant=tenant, plan=plan, start=start, end=end).values())


@pytest.fixture
def day_on_scale():
    """Pro for November (one period, the 1st to the 1st), scale for the 15th alone, then
    pro again. Pro's share: 29/30 of its fee and of its 100,000 included inputs (96,667);
    scale's: 1/30 of its 49,900 fee and of its 2,000,000 included inputs (66,667)."""
    tenant = TenantFactory(name="One Day Scale")
    subscribe(tenant, "pro")
    recorded(tenant, [(NOV, DEC, None, "pro@1")],
             [(NOV, "pro@1"), (day(15), "scale@1"), (day(16), "pro@1")])  # fmt: skip
    calls(tenant, (90_000, "pro@1", day(5)), (2_000_000, "scale@1", day(15)),
          (10_000, "pro@1", day(20)))  # fmt: skip
    return tenant


def test_a_day_on_scale_buys_a_days_share_of_its_fee_and_of_its_inputs(day_on_scale):
    """Fees: pro 4,900 x 29/30 = 4,736.67 -> 4,737; scale 49,900 / 30 = 1,663.33 -> 1,663
    (6,400 together, what Stripe's prorations leave). Usage: the 163,334 included cover pro's
    100,000 inputs first (the dearer), then 63,334 of scale's: 1,936,666 past them at 20 per
    1,000 = 38,733. Was 4,900: pro's fee alone, and every plan's whole allowance; then
    38,667 + 133, each plan's share covering only its own usage."""
    tenant = day_on_scale
    assert revenue_of(tenant, NOV, DEC) == 4_737 + 1_663 + 38_733 == 45_133
    by_plan = revenue_of(tenant, NOV, DEC, by="plan")
    assert by_plan == {"pro@1": 4_737, "scale@1": 1_663 + 38_733}
    # The usage part is what billing rates for the period.
    rated = rate_tenant_period(tenant=tenant, plan=Plan.objects.get(pk="pro@1"), start=NOV,
                               end=DEC, include_base_fee=False)  # fmt: skip
    assert rated.usage_total == 38_733 == billed_usage(tenant, NOV, DEC)


def test_a_move_down_after_using_the_allowance_keeps_only_its_share():
    """Scale for the first ten days (1/3), pro for the rest: 1,900,000 scale inputs on the
    5th are 1,166,666 past scale's 666,667 and pro's 66,667 (23,333 at 20 per 1,000); fees
    49,900 / 3 = 16,633 and 4,900 x 2/3 = 3,267. Was 4,900: scale's whole 2,000,000 covered
    them, and only pro (the plan the period ended on) paid a fee."""
    tenant = TenantFactory()
    subscribe(tenant, "pro")
    recorded(tenant, [(NOV, DEC, None, "pro@1")], [(NOV, "scale@1"), (day(11), "pro@1")])
    calls(tenant, (1_900_000, "scale@1", day(5)))
    assert revenue_of(tenant, NOV, DEC) == 23_333 + 16_633 + 3_267 == 43_233
    assert billed_usage(tenant, NOV, DEC) == 23_333


def test_a_plan_change_after_the_range_still_shares_the_period_reaching_past_it():
    """A period from 12 November to 12 December, on pro until a move to scale on 2 December:
    pro had 20 of its 30 days, 66,667 of its 100,000 included inputs, scale 10, 666,667 of
    its 2,000,000, so a call of 1,000,000 on the 20th is 266,666 past them (10,667 at 40 per
    1,000), and November's fee is pro's for its 19 days there (4,900 x 19/30 = 3,103).
    Asked for November alone, the change after it was not read: pro's whole allowance
    (36,000), and scale's whole fee (49,900)."""
    tenant = TenantFactory()
    subscribe(tenant, "scale")
    recorded(tenant, [(day(12), day(12, DEC), None, "scale@1")],
             [(day(12), "pro@1"), (day(2, DEC), "scale@1")])  # fmt: skip
    calls(tenant, (1_000_000, "pro@1", day(20)))
    assert billed_usage(tenant, NOV, DEC) == 10_667
    assert revenue_of(tenant, NOV, DEC) == 10_667 + 3_103
    assert revenue_of(tenant, day(20), day(21)) - revenue_of(tenant, day(21), day(22)) == 10_667
    simulated = pricing_simulate(start=NOV, end=DEC, proposed={})["tenants"][tenant.pk]
    assert simulated["simulated_revenue_micros"] == simulated["actual_revenue_micros"]
    assert simulated["actual_revenue_micros"] // 10_000 == 10_667 + 3_103


def test_a_range_of_part_of_the_month_earns_the_fees_of_the_time_on_each_plan_in_it(
    day_on_scale,
):
    """The 1st to the 14th: 14 days of pro's fee (2,286.67 -> 2,287), no overage yet. The
    15th alone: scale's day (1,663) and its overage past what pro's 90,000 left of the
    included inputs (1,926,666 at 20 per 1,000: 38,533), nothing of pro's. The 16th to the
    end: 15 days of pro (4,737 - 2,287 = 2,450), and pro's 10,000 inputs, taking 10,000 of
    the included inputs scale's had (200 at scale's 20). They add up to the month, and
    their usage parts are /v1/usage's."""
    tenant = day_on_scale
    cuts = [NOV, day(15), day(16), DEC]
    parts = [revenue_of(tenant, lo, hi) for lo, hi in pairwise(cuts)]
    assert parts == [2_287, 1_663 + 38_533, 2_450 + 200]
    assert sum(parts) == revenue_of(tenant, NOV, DEC) == 45_133
    fees = [2_287, 1_663, 2_450]
    for (lo, hi), part, fee in zip(pairwise(cuts), parts, fees, strict=True):
        assert part - fee == billed_usage(tenant, lo, hi)
    # By day: the day on scale carries scale's whole share.
    by_day = revenue_of(tenant, day(15), day(16), by="day")
    assert by_day == {"2025-11-15": 1_663 + 38_533}


def test_the_simulator_replays_a_plan_change_with_the_proposed_terms(day_on_scale):
    """Scale at 30,000 with 3,000,000 included inputs: a day of it is 1,000 and 100,000
    inputs, with pro's 96,667 covering pro's 100,000 and 96,667 of scale's: 1,903,333 past
    them (38,066.66 at 20 per 1,000: 38,067); pro's fee unchanged (4,737). Was 4,900 actual
    and simulated: scale's whole allowance, no fee of its own."""
    tenant = day_on_scale
    report = pricing_simulate(
        start=NOV, end=DEC, proposed={"scale": {"base_fee": 30_000, "included_inputs": 3_000_000}}
    )
    mine = report["tenants"][tenant.pk]
    assert mine["actual_revenue_micros"] == 45_133 * 10_000
    assert mine["simulated_revenue_micros"] == (4_737 + 1_000 + 38_067) * 10_000
    half = pricing_simulate(start=day(16), end=DEC, proposed={"pro": {"base_fee": 6_000}})
    # 15 days of pro at 6,000: 3,000, and the overage its inputs cause.
    assert half["tenants"][tenant.pk]["simulated_revenue_micros"] == (3_000 + 200) * 10_000


def test_a_new_subscription_in_mid_month_earns_its_days_and_keeps_its_allowance():
    """Free, then pro from the 16th (a Stripe period to 16 December), free again on 6
    December. November: 15 days of pro's fee (2,450), and pro's whole 100,000 included
    inputs for its calls (its period's, as billing gives them): 120,000 inputs are 20,000
    over (800). December: pro's time to the 6th and the rest of its period, which the move
    to free did not credit (to the 16th: 15 days of 31, 2,371), and none after it. Was
    4,900 + 800 and 4,900."""
    tenant = TenantFactory()
    subscribe(tenant, "free")
    cut, renewal = day(6, DEC), day(16, DEC)
    recorded(tenant,
             [(NOV, day(16), DEC, "free@1"), (day(16), cut, renewal, "pro@1"),
              (cut, JAN, None, "free@1")],
             [(NOV, "free@1"), (day(16), "pro@1"), (cut, "free@1")])  # fmt: skip
    calls(tenant, (120_000, "pro@1", day(20)))
    assert revenue_of(tenant, NOV, DEC) == 2_450 + 800
    assert billed_usage(tenant, NOV, DEC) == 800
    assert revenue_of(tenant, DEC, JAN) == 2_371
    by_day = margins(start=DEC, end=JAN, by="day")
    days = {r["day"] for r in by_day if r["revenue_micros"]}
    assert days == {f"2025-12-{n:02}" for n in range(1, 16)}
    assert {r["model"] for r in margins(start=DEC, end=JAN, by="model")} == {BASE_FEE}


def test_a_tenant_without_spans_keeps_its_figures():
    """The same day on scale, made before spans were kept (none at or before the period's
    start: the deploy's from its own moment): priced as before, every plan's allowance
    whole and the fee of the plan the period ended on, as billing prices that period."""
    tenant = TenantFactory()
    subscribe(tenant, "pro")
    recorded(tenant, [(NOV, DEC, None, "pro@1")], [(day(20), "pro@1")])
    calls(tenant, (90_000, "pro@1", day(5)), (2_000_000, "scale@1", day(15)),
          (10_000, "pro@1", day(20)))  # fmt: skip
    assert revenue_of(tenant, NOV, DEC) == 4_900
    assert billed_usage(tenant, NOV, DEC) == 0
    assert revenue_of(tenant, NOV, day(16)) == 2_450  # half the month, half the fee
    report = pricing_simulate(start=NOV, end=DEC, proposed={"pro": {"base_fee": 3_900}})
    assert report["tenants"][tenant.pk]["simulated_revenue_micros"] == 3_900 * 10_000


def test_adjacent_ranges_add_up_to_the_months_base_fee():
    """4,900 over three 10-day ranges of a 30-day month: 1,633 + 1,634 + 1,633, never 4,899;
    and over ranges cut inside a day, still exactly 4,900."""
    month = (NOV, DEC)
    thirds = [NOV, NOV + timedelta(days=10), NOV + timedelta(days=20), DEC]
    parts = [prorated(4_900, month, lo, hi) for lo, hi in pairwise(thirds)]
    assert parts == [1_633, 1_634, 1_633] and sum(parts) == 4_900
    idle = TenantFactory()
    sub = subscribe(idle, "pro")
    sub.current_period_start, sub.current_period_end = NOV, DEC
    billing_period_record(sub=sub)
    assert [revenue_of(idle, lo, hi) for lo, hi in pairwise(thirds)] == parts
    cuts = (timedelta(days=7, hours=5, microseconds=3), timedelta(days=19, hours=7, minutes=12))
    odd = [NOV, *(NOV + cut for cut in cuts), DEC]
    assert sum(revenue_of(idle, lo, hi) for lo, hi in pairwise(odd)) == 4_900


def test_ranges_cut_inside_a_day_add_up_to_the_months_fees_through_a_plan_change(
    day_on_scale,
):
    """Pro's 4,737 and scale's 1,663 over ranges cut at odd moments (inside days without
    calls: a day's rollups are counted whole by each range that touches it): still 45,133."""
    cuts = (timedelta(days=7, hours=5, microseconds=3), timedelta(days=15, hours=7, minutes=12))
    odd = [NOV, *(NOV + cut for cut in cuts), DEC]
    assert sum(revenue_of(day_on_scale, lo, hi) for lo, hi in pairwise(odd)) == 45_133


def test_plan_changes_as_billing_records_them_give_the_same_figures(monkeypatch):
    """The day on scale, then a move to free on the 26th, written by billing's own recording
    (a period and a span at each change, as ``subscription_change`` writes them): pro's
    time is 14 + 10 days and the 5 days of the rest the move to free left it, 29 in all,
    so the figures are the day on scale's; billing rates the same usage."""
    from django.utils import timezone

    from billing.periods import plan_span_record
    from billing.stripe_mirror import free_apply

    tenant = TenantFactory()
    sub = subscribe(tenant, "pro")
    sub.current_period_start, sub.current_period_end = NOV, DEC
    sub.save()
    billing_period_record(sub=sub)

    def change(slug: str, at: datetime) -> None:
        monkeypatch.setattr(timezone, "now", lambda: at)
        was = (sub.plan_id, sub.current_period_start)
        plan = Plan.objects.get(slug=slug, is_current=True)
        if slug == "free":
            free_apply(sub, plan)
        sub.plan = plan
        sub.save()
        billing_period_record(sub=sub)
        plan_span_record(sub=sub, was=was[0], was_since=was[1], new_period=slug == "free")

    change("scale", day(15))
    change("pro", day(16))
    change("free", day(26))
    calls(tenant, (90_000, "pro@1", day(5)), (2_000_000, "scale@1", day(15)),
          (10_000, "pro@1", day(20)))  # fmt: skip
    assert revenue_of(tenant, NOV, DEC) == 45_133
    assert billed_usage(tenant, NOV, DEC) == 38_733
    # On free from the 26th, the range still earns pro's rest (5 days: 4,737 less 3,920).
    assert revenue_of(tenant, day(26), DEC) == 817


def test_a_price_table_names_a_plan_version_for_its_tenants_alone():
    """After pro@2 (3,900) the tenant stays on pro@1 (4,900): its November is 4,900 and
    50,000 inputs past the 100,000 (2,000). A table of the current terms by slug reprices it
    (5,900, it is pro too); named pro@2 it leaves it as it is; a version wins over its slug."""
    from economics.simulation import prices_parse

    tenant = TenantFactory()
    subscribe(tenant, "pro")
    recorded(tenant, [(NOV, DEC, None, "pro@1")], [(NOV, "pro@1")])
    calls(tenant, (150_000, "pro@1", day(5)))
    old = Plan.objects.get(pk="pro@1")
    Plan.objects.filter(pk=old.pk).update(is_current=False)
    Plan.objects.create(id="pro@2", slug="pro", version=2, name="Pro", base_fee=3_900,
                        is_current=True, included_inputs=old.included_inputs,
                        overage_tiers=old.overage_tiers, currency=old.currency)  # fmt: skip

    def simulated(table: str) -> tuple[int, int]:
        line = pricing_simulate(start=NOV, end=DEC, proposed=prices_parse(table))
        mine = line["tenants"][tenant.pk]
        return mine["actual_revenue_micros"] // 10_000, mine["simulated_revenue_micros"] // 10_000

    assert simulated('{"pro": {"base_fee": 3900}}') == (6_900, 5_900)
    assert simulated('{"pro@2": {"base_fee": 3900}}') == (6_900, 6_900)
    assert simulated('{"pro": {"base_fee": 3900}, "pro@1": {"base_fee": 4900}}') == (6_900, 6_900)
    assert simulated('{"pro@1": {"included_inputs": 150000}}') == (6_900, 4_900)
    with pytest.raises(ValueError, match="unknown plan 'pro@9'"):
        prices_parse('{"pro@9": {"base_fee": 1}}')


def test_the_margins_page_by_day_says_how_a_range_is_shared_among_its_days(
    day_on_scale, admin_client
):
    """A day's line over a range is its share of the range's fees and usage, not that day's
    own charge: the page says so where it shows days, and a day asked alone is its own."""
    url = "/admin/economics/usagerollup/margins/?start={}&end={}&by={}"
    month = admin_client.get(url.format("2025-11-01", "2025-12-01", "day")).content.decode()
    assert "a day's line depends on the range asked" in month
    by_tenant = admin_client.get(url.format("2025-11-01", "2025-12-01", "tenant"))
    assert "depends on the range asked" not in by_tenant.content.decode()
    assert revenue_of(day_on_scale, day(15), day(16), by="day") == {"2025-11-15": 1_663 + 38_533}


def test_a_proposed_free_fee_is_charged_for_the_time_on_free_alone():
    """Free to the 16th (its calendar period cut short by the move to pro), pro after: a
    fee proposed for free is charged for 15 days of 30 (1,500 of 3,000), not the month, and
    the time is not counted twice. The rest of a period is its plan's only when a move to
    free cut a paid period short (an audit)."""
    tenant = TenantFactory()
    subscribe(tenant, "free")
    recorded(tenant, [(NOV, day(16), DEC, "free@1"), (day(16), DEC, None, "pro@1")],
             [(NOV, "free@1"), (day(16), "pro@1")])  # fmt: skip
    report = pricing_simulate(start=NOV, end=DEC, proposed={"free": {"base_fee": 3_000}})
    mine = report["tenants"][tenant.pk]
    assert mine["actual_revenue_micros"] == 2_450 * 10_000  # pro's 15 days
    assert mine["simulated_revenue_micros"] == (2_450 + 1_500) * 10_000
