"""Unpaid accounts: past due keeps a tenant off other paid plans and follows it to free
until its invoice is paid; an invoice open for a day (a payment failed) keeps any tenant
off paid plans."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from billing.models import Invoice, Subscription
from billing.subscriptions import subscription_for_enforcement

pytestmark = pytest.mark.django_db


def _local(tenant):
    return Subscription.objects.for_tenant(tenant).select_related("plan").get()


def _past_due(tenant) -> None:
    """Past due for ten days (beyond the grace period)."""
    Subscription.objects.for_tenant(tenant).update(
        status="past_due", past_due_since=timezone.now() - timedelta(days=10)
    )


def _invoice(tenant, status: str, *, age: timedelta = timedelta(days=10)) -> Invoice:
    """A mirrored invoice of 4,900 USD cents, made ``age`` ago."""
    return Invoice.objects.create(
        id="in_unpaid", tenant=tenant, number="MARGIN-0007", status=status, currency="usd",
        amount_due=4900, total=4900, created_at=timezone.now() - age,
    )  # fmt: skip


def test_a_past_due_tenant_pays_before_another_paid_plan(tenant, client_for, stripe_api):
    """Past due: no other paid plan; free is allowed (it cancels the subscription) but the
    debt goes along: still past due there, calls refused after the grace period, until the
    invoice is paid. (Past due, free, then paid again left the invoice uncollected for good:
    cancelling stops Stripe's collection of it.)"""
    from billing.webhooks import handle_invoice

    client = client_for(tenant, ["billing"])
    client.post("/v1/subscription", {"plan": "pro"}, format="json")
    customer = _local(tenant).stripe_customer_id
    first_invoice = stripe_api.Invoice.list(customer=customer).data[0].id  # paid at once
    _past_due(tenant)
    unpaid = _invoice(tenant, "open")
    refused = client.post("/v1/subscription", {"plan": "scale"}, format="json")
    assert refused.status_code == 402
    assert refused.json()["error"]["code"] == "subscription_unpaid"
    assert _local(tenant).plan_id == "pro@1"
    assert client.post("/v1/subscription", {"plan": "free"}, format="json").status_code == 200
    assert (_local(tenant).plan.slug, _local(tenant).status) == ("free", "past_due")
    assert subscription_for_enforcement(tenant=tenant).blocked  # calls: 402 on free too
    refused = client.post("/v1/subscription", {"plan": "pro"}, format="json")
    assert refused.status_code == 402
    assert "pay its open invoice" in refused.json()["error"]["message"]
    # Another invoice's event changes nothing while this one is open ...
    handle_invoice({"id": first_invoice, "customer": customer}, int(time.time()))
    assert _local(tenant).status == "past_due"
    # ... and once it is paid, the next invoice event clears the account.
    Invoice.objects.for_tenant(tenant).filter(pk=unpaid.pk).update(status="paid", amount_paid=4900)
    handle_invoice({"id": first_invoice, "customer": customer}, int(time.time()))
    assert (
        _local(tenant).status == "active"
        and not subscription_for_enforcement(tenant=tenant).blocked
    )
    assert client.post("/v1/subscription", {"plan": "pro"}, format="json").status_code == 200


def test_an_invoice_open_for_a_day_keeps_a_tenant_off_paid_plans(tenant, client_for, stripe_api):
    """A move to free's final invoice that then failed (the tenant was not past due): no
    paid plan until it is paid. One just made is no reason: Stripe first tries an hour
    later."""
    client = client_for(tenant, ["billing"])
    assert client.post("/v1/subscription", {"plan": "pro"}, format="json").status_code == 200
    assert client.post("/v1/subscription", {"plan": "free"}, format="json").status_code == 200
    unpaid = _invoice(tenant, "open", age=timedelta(0))
    assert client.post("/v1/subscription", {"plan": "pro"}, format="json").status_code == 200
    assert client.post("/v1/subscription", {"plan": "free"}, format="json").status_code == 200
    Invoice.objects.for_tenant(tenant).filter(pk=unpaid.pk).update(
        created_at=timezone.now() - timedelta(days=2)
    )
    refused = client.post("/v1/subscription", {"plan": "pro"}, format="json")
    assert refused.status_code == 402
    error = refused.json()["error"]
    assert error["code"] == "subscription_unpaid"
    assert "MARGIN-0007 is unpaid (4,900 due, in USD minor units)" in error["message"]
    assert _local(tenant).plan.slug == "free"
    Invoice.objects.for_tenant(tenant).filter(pk=unpaid.pk).update(status="paid", amount_paid=4900)
    assert client.post("/v1/subscription", {"plan": "pro"}, format="json").status_code == 200


def test_past_due_is_cleared_on_free_when_nothing_is_owed(tenant, client_for, stripe_api):
    client = client_for(tenant, ["billing"])
    assert client.post("/v1/subscription", {"plan": "pro"}, format="json").status_code == 200
    _past_due(tenant)
    _invoice(tenant, "uncollectible")
    assert client.post("/v1/subscription", {"plan": "free"}, format="json").status_code == 200
    # Written off while the subscription was there: nothing is owed when it leaves, so it
    # is not kept past due on free (it stayed blocked for good: no event came after).
    assert _local(tenant).status == "active"
    assert not subscription_for_enforcement(tenant=tenant).blocked


def test_dunning_cancelling_after_a_write_off_leaves_the_tenant_clear(
    tenant, client_for, stripe_api
):
    from billing.webhooks import handle_subscription

    client = client_for(tenant, ["billing"])
    assert client.post("/v1/subscription", {"plan": "pro"}, format="json").status_code == 200
    sub = _local(tenant)
    _past_due(tenant)
    # the invoice event (write-off) is processed while the subscription still exists
    _invoice(tenant, "uncollectible")
    # then Stripe's dunning cancels it
    stripe_api.Subscription.cancel(sub.stripe_subscription_id)
    handle_subscription(
        {"id": sub.stripe_subscription_id, "customer": sub.stripe_customer_id}, int(time.time())
    )
    assert (_local(tenant).plan.slug, _local(tenant).status) == ("free", "active")


def test_a_payment_made_during_a_move_to_free_is_not_written_back_as_owed(
    tenant, client_for, stripe_api, monkeypatch
):
    import stripe as stripe_mod

    from billing.webhooks import handle_invoice

    client = client_for(tenant, ["billing"])
    assert client.post("/v1/subscription", {"plan": "pro"}, format="json").status_code == 200
    sub = _local(tenant)
    first = stripe_api.Invoice.list(customer=sub.stripe_customer_id).data[0].id
    _past_due(tenant)
    _invoice(tenant, "open")
    original = stripe_mod.Subscription.cancel

    def cancel(*args, **kwargs):
        result = original(*args, **kwargs)
        # the customer pays in_unpaid; its invoice.paid webhook is processed by the worker now
        Invoice.objects.for_tenant(tenant).filter(pk="in_unpaid").update(
            status="paid", amount_paid=4900
        )
        handle_invoice({"id": first, "customer": sub.stripe_customer_id}, int(time.time()))
        assert _local(tenant).status == "active"  # cleared by the payment
        return result

    monkeypatch.setattr(stripe_mod.Subscription, "cancel", cancel)
    assert client.post("/v1/subscription", {"plan": "free"}, format="json").status_code == 200
    assert (_local(tenant).plan.slug, _local(tenant).status) == ("free", "active")
