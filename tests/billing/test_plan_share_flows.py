"""Shares of a period's included inputs through plan changes as they happen, with Stripe
(the emulator) and the usage pushes: pushed, rated, the upcoming invoice and reconciliation
agree however the shares move (found by a review of the first version of spans)."""

from __future__ import annotations

import logging
import time
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from billing.invoicing import usage_charges_push
from billing.models import BillingPeriod, PlanSpan, Subscription, UsageChargePush
from billing.periods import billing_period_record, plan_shares, plan_span_record
from billing.rating import rate_tenant_period
from billing.reconciliation import reconciliation_run
from billing.subscriptions import (
    subscription_change,
    subscription_get_or_create,
    subscription_refresh_from_stripe,
)
from plans.models import Plan
from tests.factories import ledger_row

pytestmark = pytest.mark.django_db

_real_now = timezone.now


def _at(monkeypatch, offset: timedelta) -> None:
    monkeypatch.setattr(timezone, "now", lambda: _real_now() + offset)


def _usage(tenant, inputs, plan_id, at):
    ledger_row(
        event_id=f"req_{uuid.uuid4().hex}", kind="inference", tenant=tenant, api_key_id="key_x",
        livemode=True, model="minilm-l6", inputs=inputs, tokens=inputs * 10, compute_ms=1.0,
        occurred_at=at, plan_id=plan_id,
    )  # fmt: skip


def _spans(tenant):
    return list(
        PlanSpan.objects.for_tenant(tenant).order_by("start").values_list("start", "plan_id")
    )


def _pushed(tenant, start):
    return sum(
        p.amount for p in UsageChargePush.objects.for_tenant(tenant).filter(period_start=start)
    )


def _period_days(tenant) -> float:
    """The current period's scheduled length in days: a calendar month, 28 to 31 (these
    tests assumed 30, and failed on the first of December)."""
    sub = Subscription.objects.for_tenant(tenant).get()
    return (sub.current_period_end - sub.current_period_start) / timedelta(days=1)


def _rated(tenant, start):
    period = BillingPeriod.objects.for_tenant(tenant).get(start=start)
    return rate_tenant_period(
        tenant=tenant, plan=period.plan, start=start, end=period.end, include_base_fee=False
    ).usage_total


def test_a_move_up_credits_what_the_grown_allowance_covers_now(
    tenant, stripe_api, monkeypatch, client_for
):
    """3,000,000 inputs on pro, 2,900,000 past its 100,000 (87,500 pushed); a move to scale
    on the 10th adds scale's share of its 2,000,000 to the period's included inputs, which
    cover pro's inputs too: a credit of what they cover now. A move back to pro takes some
    of them away again: charged again, never past what pro alone charged."""
    subscription_change(tenant=tenant, plan_slug="pro")
    start = Subscription.objects.for_tenant(tenant).get().current_period_start
    days = _period_days(tenant)
    _usage(tenant, 3_000_000, "pro@1", start + timedelta(days=1))
    _at(monkeypatch, timedelta(days=5))
    usage_charges_push(tenant=tenant)
    pushed = _pushed(tenant, start)
    assert pushed == 87_500  # 1,000,000 at 40 per 1,000 and 1,900,000 at 25
    _at(monkeypatch, timedelta(days=10))
    subscription_change(tenant=tenant, plan_slug="scale")
    share = plan_shares(tenant=tenant, start=start)["scale@1"]
    assert float(share) == pytest.approx((days - 10) / days, rel=1e-3)
    credit = usage_charges_push(tenant=tenant)
    assert [p.amount < 0 and p.description.startswith("Credit: ") for p in credit] == [True]
    rated = _rated(tenant, start)
    assert 0 < rated < pushed and _pushed(tenant, start) == rated
    upcoming = client_for(tenant, ["billing"]).get("/v1/invoices/upcoming").json()
    usage = sum(line["amount"] for line in upcoming["lines"] if line["key"].startswith("usage"))
    assert usage == rated
    assert reconciliation_run(tenant=tenant).difference == 0
    _at(monkeypatch, timedelta(days=20))
    subscription_change(tenant=tenant, plan_slug="pro")
    usage_charges_push(tenant=tenant)
    assert rated < _rated(tenant, start) == _pushed(tenant, start) < pushed
    assert reconciliation_run(tenant=tenant).difference == 0


def test_a_period_cut_short_keeps_the_shares_of_its_scheduled_length(
    tenant, stripe_api, monkeypatch
):
    subscription_change(tenant=tenant, plan_slug="scale")
    start = Subscription.objects.for_tenant(tenant).get().current_period_start
    days = _period_days(tenant)
    _usage(tenant, 1_000_000, "scale@1", start + timedelta(hours=12))
    _at(monkeypatch, timedelta(days=1))
    subscription_change(tenant=tenant, plan_slug="pro")  # scale keeps a day's share of its fee
    usage_charges_push(tenant=tenant)
    pushed = _pushed(tenant, start)
    _at(monkeypatch, timedelta(days=2))
    subscription_change(tenant=tenant, plan_slug="free")  # cancel: pro keeps its whole fee
    # Counted against the period as scheduled, its cut-off rest pro's: a day on scale stays
    # a day's share of its inputs (it was half of them, over the two days the period lasted).
    assert float(plan_shares(tenant=tenant, start=start)["scale@1"]) == pytest.approx(
        1 / days, rel=1e-3
    )
    assert pushed > 0 and _rated(tenant, start) == pushed


def test_a_period_that_changed_plans_before_spans_were_kept_is_not_repriced(
    tenant, stripe_api, monkeypatch
):
    subscription_change(tenant=tenant, plan_slug="scale")
    start = Subscription.objects.for_tenant(tenant).get().current_period_start
    _usage(tenant, 1_500_000, "scale@1", start + timedelta(days=1))
    _at(monkeypatch, timedelta(days=5))
    subscription_change(tenant=tenant, plan_slug="pro")
    # Made before spans were kept: the deploy's migration then wrote one, from its moment.
    PlanSpan.objects.for_tenant(tenant).delete()
    PlanSpan.objects.create(tenant=tenant, plan_id="pro@1", start=timezone.now())
    usage_charges_push(tenant=tenant)
    assert _pushed(tenant, start) == 0  # scale's whole allowance (legacy)
    _at(monkeypatch, timedelta(days=10))
    subscription_change(tenant=tenant, plan_slug="free")  # after the deploy
    # That period changed plans before spans were kept: it stays priced as it was.
    assert plan_shares(tenant=tenant, start=start) == {}
    end = BillingPeriod.objects.for_tenant(tenant).get(start=start).end
    assert usage_charges_push(tenant=tenant, start=start, end=end) == []
    assert _rated(tenant, start) == 0


def test_a_change_before_the_renewal_is_mirrored_gives_the_old_plan_its_days(tenant, monkeypatch):
    sub = subscription_get_or_create(tenant=tenant)
    s0 = sub.current_period_start
    s1, s2 = s0 + timedelta(days=30), s0 + timedelta(days=60)
    pro, scale = Plan.objects.get(pk="pro@1"), Plan.objects.get(pk="scale@1")
    # On pro since s0 (a span from an earlier change), period [s0, s1) recorded.
    PlanSpan.objects.for_tenant(tenant).update_or_create(
        tenant=tenant, start=s0, defaults={"plan": pro}
    )
    sub.plan, sub.current_period_end = pro, s1
    sub.save()
    billing_period_record(sub=sub)
    # Stripe renewed at s1; the webhook is late. The tenant uses pro on day 1 of the new
    # period, and on day 2 changes to scale: Stripe's answer carries the new period.
    _usage(tenant, 6_000, "pro@1", s1 + timedelta(days=1))
    _at(monkeypatch, s1 + timedelta(days=2) - _real_now())
    was = (sub.plan_id, sub.current_period_start)
    sub.plan, sub.current_period_start, sub.current_period_end = scale, s1, s2
    sub.save()
    billing_period_record(sub=sub)
    plan_span_record(sub=sub, was=was[0], was_since=was[1], new_period=False)  # a modify
    # Pro's two days of the new period, before the change, are pro's.
    shares = plan_shares(tenant=tenant, start=s1)
    assert {plan: float(share) for plan, share in shares.items()} == {
        "pro@1": pytest.approx(2 / 30, rel=1e-3),
        "scale@1": pytest.approx(28 / 30, rel=1e-3),
    }
    assert _rated(tenant, s1) == 0  # 6,000 within pro's 6,667


def test_a_change_made_in_stripe_counts_from_its_event_not_its_processing(
    tenant, stripe_api, monkeypatch
):
    """A downgrade made in Stripe's dashboard (Stripe prorates from that moment); the
    webhook (or the daily re-read) is processed a day later."""
    sub = subscription_change(tenant=tenant, plan_slug="scale")
    start = sub.current_period_start
    changed_at = int(time.time()) + 3600  # an hour into the period, by its event
    from billing.stripe_sync import plan_sync_to_stripe

    pro = plan_sync_to_stripe(plan=Plan.objects.get(pk="pro@1"))
    item = stripe_api.Subscription.retrieve(sub.stripe_subscription_id).to_dict()["items"]
    stripe_api.Subscription.modify(
        sub.stripe_subscription_id,
        items=[{"id": item["data"][0]["id"], "plan": pro.stripe_plan_id}],
    )
    _at(monkeypatch, timedelta(days=1))  # worker outage / lost webhook -> daily re-read
    subscription_refresh_from_stripe(
        customer_id=sub.stripe_customer_id, stripe_subscription_id=sub.stripe_subscription_id,
        snapshot={}, event_created=changed_at,
    )  # fmt: skip
    assert Subscription.objects.for_tenant(tenant).get().plan_id == "pro@1"
    # Stripe prorated scale's fee from its change: scale's time ends there, not a day later.
    (_, was), (since, now_on) = _spans(tenant)[-2:]
    assert (was, now_on) == ("scale@1", "pro@1")
    assert abs(since.timestamp() - changed_at) < 5
    scale = plan_shares(tenant=tenant, start=start)["scale@1"]
    assert float(scale * (sub.current_period_end - start).total_seconds()) == pytest.approx(
        3600, abs=5
    )


def test_a_period_in_progress_at_the_deploy_is_priced_as_before(tenant, stripe_api, monkeypatch):
    """On pro from s0, moved to scale on day 5 BEFORE the deploy (no spans), with no pro
    usage in those 5 days. After the deploy, back to pro on day 20."""
    sub = subscription_change(tenant=tenant, plan_slug="pro")
    start = sub.current_period_start
    _at(monkeypatch, timedelta(days=5))
    subscription_change(tenant=tenant, plan_slug="scale")
    # Made before spans were kept: the deploy's migration then wrote one, from its moment.
    PlanSpan.objects.for_tenant(tenant).delete()
    _at(monkeypatch, timedelta(days=5, hours=1))
    PlanSpan.objects.create(tenant=tenant, plan_id="scale@1", start=timezone.now())
    _usage(tenant, 500_000, "scale@1", start + timedelta(days=6))
    _at(monkeypatch, timedelta(days=20))
    subscription_change(tenant=tenant, plan_slug="pro")
    _usage(tenant, 60_000, "pro@1", start + timedelta(days=21))
    # Nothing says which plan the period began on: every plan's allowance whole, as
    # before (a guess from the ledger gave scale 2/3 where Stripe prorated half each).
    assert plan_shares(tenant=tenant, start=start) == {}
    period = BillingPeriod.objects.for_tenant(tenant).get(start=start)
    rated = rate_tenant_period(
        tenant=tenant, plan=period.plan, start=start, end=period.end, include_base_fee=False
    )
    assert rated.usage_total == 0  # 500,000 within scale's, 60,000 within pro's


def test_a_credit_after_the_subscription_ended_asks_for_no_negative_invoice(
    tenant, stripe_api, monkeypatch, caplog
):
    """The credit for a move up to scale is not pushed before the move to free (a push was
    holding the tenant's lock): it goes out later as a negative item on an ended
    subscription, invoiced on its own."""
    from limits.services import redis_client

    sub = subscription_change(tenant=tenant, plan_slug="pro")
    start = sub.current_period_start
    _usage(tenant, 3_000_000, "pro@1", start + timedelta(hours=1))
    _at(monkeypatch, timedelta(days=5))
    usage_charges_push(tenant=tenant)
    _at(monkeypatch, timedelta(days=10))
    subscription_change(tenant=tenant, plan_slug="scale")
    lock = redis_client().lock(f"usage-push:{tenant.pk}", timeout=60)
    assert lock.acquire()
    try:
        subscription_change(tenant=tenant, plan_slug="free")
    finally:
        lock.release()
    end = BillingPeriod.objects.for_tenant(tenant).get(start=start).end
    caplog.set_level(logging.WARNING, logger="billing.invoicing")
    late = usage_charges_push(tenant=tenant, start=start, end=end)
    assert [push.amount < 0 for push in late] == [True]  # the credit, pushed late
    # Left on the customer and said, not asked for as an invoice at every push for good.
    assert "left on Stripe customer" in caplog.text and "left pending" not in caplog.text
    awaiting = UsageChargePush.objects.for_tenant(tenant).filter(awaiting_invoice=True)
    assert not awaiting.exists()
    # The customer was charged the credit's worth more than the ledger says, and the credit
    # waits for an invoice only a new subscription would make: reconciliation says so (it
    # counted the credit as held and read 0: a person was never told to refund it).
    assert reconciliation_run(tenant=tenant, start=start).difference == late[0].amount


def test_a_move_to_free_records_a_renewal_whose_webhook_was_lost(tenant, stripe_api, client_for):
    """Stripe renewed, its webhook was lost: the row still had the period before. The move
    to free read Stripe's period first, so its usage was pushed on the final invoice (it was
    in no recorded period: never pushed, never checked)."""
    sub = subscription_change(tenant=tenant, plan_slug="pro")
    renewed = sub.current_period_start  # Stripe's period: as if it were a renewal
    BillingPeriod.objects.for_tenant(tenant).delete()
    sub.current_period_start, sub.current_period_end = renewed - timedelta(days=30), renewed
    sub.save()
    billing_period_record(sub=sub)  # the period before, as the row had it
    _usage(tenant, 150_000, "pro@1", renewed)  # 50,000 past pro's included
    subscription_change(tenant=tenant, plan_slug="free")
    assert BillingPeriod.objects.for_tenant(tenant).filter(start=renewed).exists()
    assert _pushed(tenant, renewed) == 2000
    usage = client_for(tenant, ["billing"]).get("/v1/usage", {"start": renewed.isoformat()})
    assert usage.json()["total"]["amount"] == 2000
