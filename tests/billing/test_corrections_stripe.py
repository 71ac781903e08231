"""A ledger correction reaches Stripe (the emulator): the line it shrank goes as a credit
item under the line's next key, once however often the push runs, and reconciliation then
finds Stripe and the ledger in agreement."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from billing.invoicing import usage_charges_push
from billing.models import Subscription, UsageChargePush
from billing.reconciliation import reconciliation_run
from billing.subscriptions import subscription_change
from metering.corrections import usage_record_void
from tests.billing.helpers import period_set, wait_for
from tests.metering.test_corrections import call

pytestmark = pytest.mark.django_db
# (Calls are dated now: the subscription's period begins as it is made.)


def _stripe_amounts(api, customer_id):
    items = [i.to_dict() for i in api.InvoiceItem.list(customer=customer_id, limit=100).data]
    return sorted(i["amount"] for i in items if (i.get("metadata") or {}).get("line"))


def test_a_void_after_a_push_sends_a_credit_item_and_reconciles(tenant, stripe_api, client_for):
    sub = subscription_change(tenant=tenant, plan_slug="pro")
    first = call(tenant, 150_000, at=timezone.now())  # 50,000 past the 100,000 included: 2,000
    wrong = call(tenant, 20_000, at=timezone.now())  # 20,000 more over: 800
    assert [(p.line, p.amount) for p in usage_charges_push(tenant=tenant)] == [
        ("usage:standard", 2800)
    ]

    usage_record_void(event_id=wrong, reason="billed twice by a client retry bug")
    credit = usage_charges_push(tenant=tenant)
    assert [(p.line, p.amount) for p in credit] == [("usage:standard", -800)]
    assert credit[0].idempotency_key.endswith("usage:standard:2")
    assert credit[0].description.startswith("Credit: ")
    assert usage_charges_push(tenant=tenant) == []  # once
    customer = Subscription.objects.for_tenant(tenant).get().stripe_customer_id
    assert _stripe_amounts(stripe_api, customer) == [-800, 2800]
    row = reconciliation_run(tenant=tenant)
    assert (row.ledger_amount, row.stripe_amount, row.difference) == (2000, 2000, 0)
    upcoming = client_for(tenant, ["billing"]).get("/v1/invoices/upcoming").json()
    usage = [(line["key"], line["amount"]) for line in upcoming["lines"] if "usage" in line["key"]]
    assert usage == [("usage:standard", 2000)]

    # Voiding the rest takes the line to nothing: the rest of it goes back too.
    usage_record_void(event_id=first, reason="the whole batch was a load test")
    assert [(p.line, p.amount) for p in usage_charges_push(tenant=tenant)] == [
        ("usage:standard", -2000)
    ]
    assert sum(_stripe_amounts(stripe_api, sub.stripe_customer_id)) == 0
    row = reconciliation_run(tenant=tenant)
    assert (row.ledger_amount, row.stripe_amount, row.difference) == (0, 0, 0)


def test_a_void_before_any_push_is_never_billed(tenant, stripe_api):
    sub = subscription_change(tenant=tenant, plan_slug="pro")
    call(tenant, 110_000, at=timezone.now())  # 10,000 over: 400
    wrong = call(tenant, 5_000, at=timezone.now())
    usage_record_void(event_id=wrong, reason="duplicate")
    assert [(p.line, p.amount) for p in usage_charges_push(tenant=tenant)] == [
        ("usage:standard", 400)
    ]
    assert _stripe_amounts(stripe_api, sub.stripe_customer_id) == [400]
    assert reconciliation_run(tenant=tenant).difference == 0


def test_a_voided_fine_tune_is_credited_as_fine_tuning(tenant, stripe_api):
    """Its credit item said "Usage past the included inputs: none now" (an operator audit)."""
    subscription_change(tenant=tenant, plan_slug="pro")
    job = call(
        tenant, 0, kind="fine_tune", model="ft:minilm-l6:x:1", tokens=200_000, at=timezone.now()
    )
    [billed] = usage_charges_push(tenant=tenant)
    assert billed.line == "finetune" and billed.amount > 0
    usage_record_void(event_id=job, reason="the job failed its user")
    [credit] = usage_charges_push(tenant=tenant)
    assert (credit.line, credit.amount) == ("finetune", -billed.amount)
    assert credit.description.startswith("Credit: Fine-tuning: none now")
    assert reconciliation_run(tenant=tenant).difference == 0


def _pushed_amounts(tenant, start):
    pushes = UsageChargePush.objects.for_tenant(tenant).filter(
        period_start=start, pushed_at__isnull=False
    )
    return sorted(pushes.values_list("amount", flat=True))


def test_a_void_reaches_stripe_without_waiting_for_the_hourly_push(
    tenant, live_server, platform_worker, stripe_api
):
    """The credit goes as the void commits (the platform worker's push), so a void made in
    the hour before a renewal is on the invoice it corrects, not the next one."""
    sub = subscription_change(tenant=tenant, plan_slug="pro")
    call(tenant, 150_000, at=timezone.now())
    wrong = call(tenant, 20_000, at=timezone.now())
    usage_charges_push(tenant=tenant)
    usage_record_void(event_id=wrong, reason="billed twice by a client retry bug")
    start = Subscription.objects.for_tenant(tenant).get().current_period_start
    with platform_worker():
        wait_for(lambda: _pushed_amounts(tenant, start) == [-800, 2800], what="the credit")
    assert _stripe_amounts(stripe_api, sub.stripe_customer_id) == [-800, 2800]
    assert reconciliation_run(tenant=tenant).difference == 0


def test_a_void_in_a_period_closed_this_week_pushes_that_period(
    tenant, live_server, platform_worker, stripe_api
):
    """Ended a day ago, not invoiced yet (no invoice mirrored): still open to corrections,
    and its credit goes to Stripe at once, for that period rather than the current one."""
    sub = subscription_change(tenant=tenant, plan_slug="pro")
    now = timezone.now()
    old_start, old_end = now - timedelta(days=31), now - timedelta(days=1)
    period_set(tenant, old_start, old_end)
    call(tenant, 110_000, at=old_end - timedelta(days=2))  # 10,000 over: 400
    wrong = call(tenant, 5_000, at=old_end - timedelta(days=1))  # 200 more
    assert [p.amount for p in usage_charges_push(tenant=tenant)] == [600]
    period_set(tenant, old_end, old_end + timedelta(days=30))

    usage_record_void(event_id=wrong, reason="a duplicate")
    with platform_worker():
        wait_for(lambda: _pushed_amounts(tenant, old_start) == [-200, 600], what="the credit")
    assert _stripe_amounts(stripe_api, sub.stripe_customer_id) == [-200, 600]
    assert reconciliation_run(tenant=tenant, start=old_start, until=now).difference == 0


def test_voiding_many_calls_in_the_admin_queues_one_push_for_their_period(
    tenant, live_server, platform_worker, stripe_api, settings
):
    """Five voids of one period, one action: one usage push queued (five queued five, each
    waiting on the tenant's push lock in turn), and Stripe gets the whole credit."""
    import redis

    from config.celery import PLATFORM_QUEUE
    from metering.models import UsageRecord
    from tests.factories import staff_client

    sub = subscription_change(tenant=tenant, plan_slug="pro")
    call(tenant, 150_000, at=timezone.now())  # 50,000 over: 2,000
    wrong = [call(tenant, 1_000, at=timezone.now()) for _ in range(5)]  # 5,000 more: 200
    usage_charges_push(tenant=tenant)
    queue = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    queue.delete(PLATFORM_QUEUE)
    pks = list(UsageRecord.objects.for_tenant(tenant).filter(event_id__in=wrong)
               .values_list("pk", flat=True))  # fmt: skip
    done = staff_client(superuser=True).post(
        "/admin/metering/usagerecord/",
        {"action": "void_selected", "_selected_action": pks, "confirm": "yes",
         "reason": "a client retried without its idempotency key"},
        follow=True,
    )  # fmt: skip
    assert done.status_code == 200 and done.content.decode().count("Voided req_") == 5
    assert queue.llen(PLATFORM_QUEUE) == 1
    start = Subscription.objects.for_tenant(tenant).get().current_period_start
    with platform_worker():
        wait_for(lambda: _pushed_amounts(tenant, start) == [-200, 2200], what="the credit")
    assert _stripe_amounts(stripe_api, sub.stripe_customer_id) == [-200, 2200]
