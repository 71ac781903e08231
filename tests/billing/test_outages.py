"""Billing when something fails or arrives out of order: a crash inside a period's record,
an invoice voided after it was mirrored open, a push still running when a tenant leaves for
free, Redis gone mid-change (from a review of the billing audit's fixes)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import redis
from django.db.models.query import QuerySet
from django.utils import timezone

from billing import invoicing, periods
from billing.models import BillingPeriod, Invoice, StripeEvent, Subscription
from billing.subscriptions import subscription_get_or_create
from billing.webhooks import HANDLERS, stripe_event_process
from limits.services import redis_client
from tests.billing.helpers import declining_customer

pytestmark = pytest.mark.django_db


def _local(tenant):
    return Subscription.objects.for_tenant(tenant).select_related("plan").get()


def test_a_crash_inside_a_periods_record_leaves_the_periods_as_they_were(tenant, monkeypatch):
    """It cuts the previous period, then writes the new one: a failure between the two left
    the month cut short with nothing after it (the rating reads those periods)."""
    sub = subscription_get_or_create(tenant=tenant)
    before = list(BillingPeriod.objects.for_tenant(tenant).values_list("start", "end"))
    sub.current_period_start = timezone.now()  # as a move to free's new period

    def crash(self, *args, **kwargs):
        raise RuntimeError("after the cut, before the new period")

    monkeypatch.setattr(QuerySet, "update_or_create", crash)
    with pytest.raises(RuntimeError):
        periods.billing_period_record(sub=sub)
    assert list(BillingPeriod.objects.for_tenant(tenant).values_list("start", "end")) == before


def test_a_voided_invoice_no_longer_keeps_the_tenant_off_paid_plans(
    tenant, client_for, stripe_api, monkeypatch
):
    """A declined first payment's invoice, mirrored open by its payment_failed webhook, then
    voided: with no handler for invoice.voided the mirror stayed open, and the tenant was
    refused every paid plan for good, asked to pay an invoice that could not be paid."""
    client = client_for(tenant, ["billing"])
    customer = declining_customer(stripe_api, tenant, client)
    void = stripe_api.Invoice.void_invoice

    def mirrored_first(invoice_id, *args, **kwargs):
        HANDLERS["invoice.payment_failed"]({"id": invoice_id, "customer": customer.id},
                                           int(time.time()))  # fmt: skip
        return void(invoice_id, *args, **kwargs)

    monkeypatch.setattr(stripe_api.Invoice, "void_invoice", mirrored_first)
    assert client.post("/v1/subscription", {"plan": "pro"}, format="json").status_code == 402
    invoice = Invoice.objects.for_tenant(tenant).get()
    assert invoice.status == "open"
    StripeEvent.objects.create(
        id="evt_void", type="invoice.voided",
        payload={"id": "evt_void", "type": "invoice.voided", "created": int(time.time()),
                 "data": {"object": {"id": invoice.id, "customer": customer.id}}},
    )  # fmt: skip
    assert stripe_event_process(event_id="evt_void")
    assert Invoice.objects.for_tenant(tenant).get().status == "void"
    Invoice.objects.for_tenant(tenant).update(created_at=timezone.now() - timedelta(days=2))
    good = stripe_api.PaymentMethod.attach("pm_card_visa", customer=customer.id)
    stripe_api.Customer.modify(customer.id, invoice_settings={"default_payment_method": good.id})
    assert client.post("/v1/subscription", {"plan": "pro"}, format="json").status_code == 200


def test_a_move_to_free_does_not_wait_for_a_push_still_running(tenant, client_for, stripe_api):
    """It waited the push lock's whole minute, holding the change lock (another change was
    a 409 meanwhile) and outliving the request's idempotency window."""
    client = client_for(tenant, ["billing"])
    assert client.post("/v1/subscription", {"plan": "pro"}, format="json").status_code == 200
    held = redis_client().lock(f"usage-push:{tenant.pk}", timeout=120)
    assert held.acquire(blocking=False)
    try:
        began = time.monotonic()
        response = client.post("/v1/subscription", {"plan": "free"}, format="json")
        elapsed = time.monotonic() - began
    finally:
        held.release()
    assert response.status_code == 200 and _local(tenant).plan.slug == "free"
    assert elapsed < 10, elapsed
    assert not stripe_api.Subscription.list(customer=_local(tenant).stripe_customer_id,
                                            status="active").data  # fmt: skip


def test_redis_gone_at_the_push_still_lets_a_tenant_leave_for_free(
    tenant, client_for, stripe_api, monkeypatch
):
    """A 500 before the cancel was sent: the tenant stayed subscribed."""
    client = client_for(tenant, ["billing"])
    assert client.post("/v1/subscription", {"plan": "pro"}, format="json").status_code == 200

    class Down:
        def lock(self, *args, **kwargs):
            raise redis.ConnectionError("Redis went away")

    monkeypatch.setattr(invoicing, "redis_client", lambda: Down())
    response = client.post("/v1/subscription", {"plan": "free"}, format="json")
    assert response.status_code == 200, response.content
    assert _local(tenant).plan.slug == "free"
