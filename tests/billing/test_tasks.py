"""The platform worker's tasks, run by a real Celery worker on the test Redis: Stripe
cancelling a subscription, a period rolling over, the beat's push-and-reconcile and the
sweep of events that were never enqueued."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from billing.models import Reconciliation, StripeEvent, Subscription, UsageChargePush
from billing.subscriptions import subscription_change
from billing.tasks import reconcile_all_task, stripe_events_sweep_task
from tests.billing.helpers import deliver, wait_for
from tests.factories import ledger_row


def _usage(tenant, inputs, at=None):
    ledger_row(
        event_id=f"req_{uuid.uuid4().hex}", kind="inference", tenant=tenant, api_key_id="key_x",
        livemode=True, model="minilm-l6", inputs=inputs, tokens=inputs, compute_ms=1.0,
        occurred_at=at or timezone.now(),
    )  # fmt: skip


def _event(kind, obj):
    return {"id": f"evt_test_{uuid.uuid4().hex[:16]}", "object": "event", "type": kind,
            "created": int(time.time()), "data": {"object": obj}}  # fmt: skip


def _sub(tenant):
    return Subscription.objects.for_tenant(tenant).get()


def test_stripe_cancelling_the_subscription_puts_the_tenant_on_free(
    tenant, live_server, platform_worker, stripe_api
):
    subscription_change(tenant=tenant, plan_slug="pro")
    stripe_id = _sub(tenant).stripe_subscription_id
    cancelled = stripe_api.Subscription.cancel(stripe_id).to_dict()  # as dunning would
    assert (
        deliver(live_server.url, _event("customer.subscription.deleted", cancelled)).status_code
        == 200
    )
    with platform_worker():
        wait_for(lambda: _sub(tenant).plan_id == "free@1", what="back on free")
    sub = _sub(tenant)
    assert (sub.status, sub.stripe_subscription_id) == ("active", "")


def test_a_period_rollover_bills_the_closed_periods_last_usage(
    tenant, live_server, platform_worker, stripe_api
):
    subscription_change(tenant=tenant, plan_slug="pro")
    sub = _sub(tenant)
    new_start = sub.current_period_start
    old_start = new_start - timedelta(days=30)
    # As if we still held last month's period, with usage in it nobody pushed yet.
    Subscription.objects.for_tenant(tenant).update(
        current_period_start=old_start, current_period_end=new_start, stripe_updated_at=0
    )
    _usage(tenant, 101_000, at=old_start + timedelta(days=2))
    remote = stripe_api.Subscription.retrieve(sub.stripe_subscription_id).to_dict()
    assert (
        deliver(live_server.url, _event("customer.subscription.updated", remote)).status_code == 200
    )
    with platform_worker():
        push = wait_for(
            lambda: (
                UsageChargePush.objects.for_tenant(tenant).filter(pushed_at__isnull=False).first()
            ),
            what="the closed period's push",
        )
    assert (push.period_start, push.line, push.amount) == (old_start, "usage:standard", 40)
    assert _sub(tenant).current_period_start == new_start
    item = stripe_api.InvoiceItem.retrieve(push.stripe_invoice_item_id).to_dict()
    assert item["metadata"]["period_start"] == str(int(old_start.timestamp()))


def test_beat_pushes_and_reconciles_every_paid_tenant(
    tenant, other_tenant, live_server, platform_worker
):
    subscription_change(tenant=tenant, plan_slug="pro")
    _usage(tenant, 100_500)
    _usage(other_tenant, 500)  # on free: nothing to push or reconcile
    with platform_worker():
        reconcile_all_task.apply_async()
        row = wait_for(
            lambda: Reconciliation.objects.for_tenant(tenant).first(), what="reconciliation"
        )
    assert (row.ledger_amount, row.stripe_amount, row.difference) == (20, 20, 0)
    assert not Reconciliation.objects.for_tenant(other_tenant).exists()


def test_the_daily_run_finds_a_cancellation_whose_webhook_was_lost(
    tenant, live_server, platform_worker, stripe_api, client_for
):
    """Cancelled in Stripe, its event never delivered: the tenant was still served on the
    paid plan, and its upcoming invoice was a 503, until Stripe sent the event again. The
    daily run now reads the subscription from Stripe first."""
    subscription_change(tenant=tenant, plan_slug="pro")
    stripe_api.Subscription.cancel(_sub(tenant).stripe_subscription_id)  # no webhook here
    assert _sub(tenant).plan_id == "pro@1"
    with platform_worker():
        reconcile_all_task.apply_async()
        wait_for(lambda: _sub(tenant).plan.slug == "free" or None, what="the move to free")
    assert _sub(tenant).stripe_subscription_id == ""
    assert client_for(tenant, ["billing"]).get("/v1/invoices/upcoming").status_code == 200


def test_the_sweep_processes_events_that_were_never_enqueued(
    tenant, live_server, platform_worker, stripe_api
):
    subscription_change(tenant=tenant, plan_slug="pro")
    stripe_id = _sub(tenant).stripe_subscription_id
    cancelled = stripe_api.Subscription.cancel(stripe_id).to_dict()
    event = _event("customer.subscription.deleted", cancelled)
    StripeEvent.objects.create(id=event["id"], type=event["type"], payload=event)
    StripeEvent.objects.filter(pk=event["id"]).update(
        received_at=datetime.now(UTC) - timedelta(minutes=5)
    )
    with platform_worker():
        stripe_events_sweep_task.apply_async()
        wait_for(
            lambda: StripeEvent.objects.filter(pk=event["id"], processed_at__isnull=False).exists(),
            what="the swept event",
        )
    assert _sub(tenant).plan_id == "free@1"


@pytest.mark.django_db
def test_billing_tasks_go_to_the_platform_queue():
    from config.celery import PLATFORM_QUEUE, app

    assert app.amqp.router.route({}, "billing.stripe_event_process")["queue"].name == PLATFORM_QUEUE
