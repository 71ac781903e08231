"""POST /webhooks/stripe over real HTTP: signatures checked on the raw body, each event
stored once and processed by a real Celery worker, the outcome independent of duplicates
and delivery order, and past_due followed through to the 402 flag and back."""

from __future__ import annotations

import json
import random
import time
import uuid

import httpx
import pytest

from billing.models import Invoice, StripeEvent, Subscription
from billing.subscriptions import subscription_change, subscription_for_enforcement
from tests.billing.helpers import SECRETS, deliver, sign, wait_for


def _event(kind, obj, created=None):
    return {
        "id": f"evt_test_{uuid.uuid4().hex[:16]}", "object": "event", "type": kind,
        "created": created or int(time.time()), "data": {"object": obj}, "livemode": False,
    }  # fmt: skip


def _post(url, body, headers):
    return httpx.post(f"{url}/webhooks/stripe", content=body, headers=headers, timeout=10)


def test_forged_stale_unsigned_are_401_and_malformed_400_with_no_effect(live_server):
    url = live_server.url
    event = _event("customer.subscription.deleted", {"id": "sub_x", "customer": "cus_x"})
    body = json.dumps(event).encode()
    cases = {
        "unsigned": ({}, "missing_signature"),
        "forged": ({"Stripe-Signature": sign(body, secret="whsec_attacker")}, "invalid_signature"),
        "stale": (
            {"Stripe-Signature": sign(body, timestamp=int(time.time()) - 301)},
            "invalid_signature",
        ),
        "garbage header": ({"Stripe-Signature": "nonsense"}, "invalid_signature"),
        # Not UTF-8 (so not signed by Stripe): was a 400 invalid_payload, before any check.
        "not utf-8": (
            {"Stripe-Signature": "t=1,v1=deadbeef", "X-Body": "latin-1"},
            "invalid_signature",
        ),
        "tampered": (
            {"Stripe-Signature": sign(body.replace(b"deleted", b"created"))},
            "invalid_signature",
        ),
    }
    for name, (headers, code) in cases.items():
        sent = body.replace(b"sub_x", b"sub_\xff") if headers.pop("X-Body", None) else body
        response = _post(url, sent, headers)
        # The signature is the webhook's credential: without a good one, a 401 that says so.
        assert response.status_code == 401, name
        assert response.headers["WWW-Authenticate"].startswith("Stripe-Signature"), name
        assert response.json()["error"] == {
            "type": "authentication", "code": code, "message": response.json()["error"]["message"],
            "param": None,
        }, name  # fmt: skip
    malformed = [
        b"not json", b'{"just": "json"}', b"[]", b"[" * 5000 + b"]" * 5000,
        json.dumps({**event, "data": ["not", "an", "object"]}).encode(),
        json.dumps({**event, "data": "text"}).encode(),
        json.dumps({**event, "id": "evt_\u0000"}).encode(),  # jsonb cannot hold NUL
        json.dumps({**event, "id": "evt_" + "x" * 200}).encode(),  # past the column
        json.dumps({**event, "type": "t" * 101}).encode(),
        json.dumps({**event, "id": ""}).encode(),
        # Signed, but what every handler reads is missing: it failed on every retry.
        json.dumps({**event, "data": {"object": {"customer": "cus_x"}}}).encode(),
        json.dumps({**event, "created": "abc"}).encode(),
        json.dumps({**event, "created": 10**12}).encode(),  # year 33658: failed every retry
        json.dumps({**event, "created": -5}).encode(),
        json.dumps({k: v for k, v in event.items() if k != "created"}).encode(),
        # What no database can store: answered 500 (a lone surrogate), or 200 "duplicate"
        # and dropped (NaN), before.
        json.dumps(event).replace('"sub_x"', '"sub_\\ud800"', 1).encode(),
        json.dumps({**event, "data": {"object": {"id": "sub_x", "x": float("nan")}}}).encode(),
        json.dumps({**event, "data": {"object": {"id": "sub_x", "x": float("inf")}}}).encode(),
    ]  # fmt: skip
    for payload in malformed:
        response = _post(url, payload, {"Stripe-Signature": sign(payload)})
        assert response.status_code == 400, payload[:300]
        assert response.json()["error"]["code"] == "invalid_payload"
    assert httpx.get(f"{url}/webhooks/stripe").status_code == 405
    # Over the request limit (16 MB): a 413 in the contract's shape, as on any route.
    huge = b'{"pad": "' + b"x" * (17 * 1024 * 1024) + b'"}'
    response = _post(url, huge, {"Stripe-Signature": sign(huge)})
    assert response.status_code == 413 and response.json()["error"]["type"] == "too_large"
    assert StripeEvent.objects.count() == 0

    # The second secret (mid-rotation) is accepted too; a duplicate is 200 and stored once.
    assert deliver(url, event, secret=SECRETS[1]).json() == {"received": True}
    assert deliver(url, event).json() == {"received": True, "duplicate": True}
    assert StripeEvent.objects.count() == 1


def test_events_wait_for_a_configured_secret(live_server, settings):
    """Without a webhook secret, no signature can be verified: a 401 that says why (Stripe
    retries until one is configured), not a 400 that blames the event."""
    settings.STRIPE_WEBHOOK_SECRETS = []
    event = _event("customer.subscription.deleted", {"id": "sub_x", "customer": "cus_x"})
    body = json.dumps(event).encode()
    response = _post(live_server.url, body, {"Stripe-Signature": sign(body)})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "webhook_not_configured"
    assert StripeEvent.objects.count() == 0


def _state(tenant):
    sub = Subscription.objects.for_tenant(tenant).get()
    invoices = sorted(
        (i.id, i.status, i.total, i.amount_paid) for i in Invoice.objects.for_tenant(tenant)
    )
    return (sub.plan_id, sub.status, sub.stripe_subscription_id, sub.past_due_since, invoices)


def _lose_local_state(tenant):
    """As if our own writes had never happened: only webhooks can restore the state."""
    Subscription.objects.for_tenant(tenant).update(
        plan_id="pro@1", status="past_due", stripe_updated_at=0
    )
    Invoice.objects.for_tenant(tenant).delete()
    StripeEvent.objects.all().delete()


def test_each_event_twice_and_shuffled_reaches_the_same_state(
    tenant, live_server, platform_worker, stripe_api
):
    subscription_change(tenant=tenant, plan_slug="pro")
    sub = Subscription.objects.for_tenant(tenant).get()
    created = stripe_api.Subscription.retrieve(sub.stripe_subscription_id).to_dict()
    first_invoice = stripe_api.Invoice.retrieve(created["latest_invoice"]).to_dict()
    subscription_change(tenant=tenant, plan_slug="scale")
    updated = stripe_api.Subscription.retrieve(sub.stripe_subscription_id).to_dict()
    expected = (
        "scale@1", "active", sub.stripe_subscription_id, None,
        [(first_invoice["id"], "paid", 4900, 4900)],
    )  # fmt: skip
    events = [
        _event("customer.subscription.created", created),
        _event("invoice.finalized", {**first_invoice, "status": "open", "amount_paid": 0}),
        _event("invoice.paid", first_invoice),
        _event("customer.subscription.updated", updated),
        _event("customer.subscription.deleted", {**created, "id": "sub_someone_elses"}),
    ]
    outcomes = []
    for seed in (1, 2):
        _lose_local_state(tenant)
        deliveries = events * 2
        random.Random(seed).shuffle(deliveries)
        answers = [deliver(live_server.url, event).status_code for event in deliveries]
        assert answers == [200] * len(deliveries)
        with platform_worker():
            wait_for(
                lambda: (
                    StripeEvent.objects.filter(processed_at__isnull=False).count() == len(events)
                ),
                what="the worker to process every event",
            )
        assert StripeEvent.objects.exclude(error="").count() == 0
        outcomes.append(_state(tenant))
    assert outcomes == [expected, expected]


def test_past_due_flags_402_after_grace_and_paying_clears_it(
    tenant, webhook_target, platform_worker, stripe_api, settings, client_for
):
    subscription_change(tenant=tenant, plan_slug="pro")
    sub = Subscription.objects.for_tenant(tenant).get()
    customer = sub.stripe_customer_id
    # The card starts failing; a charge is due (the emulator charges on an interval change).
    bad = stripe_api.PaymentMethod.attach("pm_card_chargeCustomerFail", customer=customer)
    stripe_api.Customer.modify(customer, invoice_settings={"default_payment_method": bad.id})
    weekly = f"test-weekly-{uuid.uuid4().hex[:8]}"
    stripe_api.Plan.create(id=weekly, product="margin-pro", amount=9900, currency="usd",
                           interval="week")  # fmt: skip
    item = stripe_api.Subscription.retrieve(sub.stripe_subscription_id).to_dict()["items"]
    stripe_api.Subscription.modify(
        sub.stripe_subscription_id, items=[{"id": item["data"][0]["id"], "plan": weekly}]
    )
    remote = stripe_api.Subscription.retrieve(
        sub.stripe_subscription_id, expand=["latest_invoice"]
    ).to_dict()
    invoice = remote["latest_invoice"]
    assert (remote["status"], invoice["status"]) == ("past_due", "open")

    # Stripe tells us (twice: redeliveries happen).
    url = webhook_target()
    failed = _event("invoice.payment_failed", invoice)
    for _ in range(2):
        assert deliver(url, failed).status_code == 200

    def is_past_due():
        row = Subscription.objects.for_tenant(tenant).get()
        return row if row.status == "past_due" else None

    with platform_worker():
        row = wait_for(is_past_due, what="past_due")
    assert row.past_due_since.timestamp() == invoice["status_transitions"]["finalized_at"]
    assert subscription_for_enforcement(tenant=tenant).blocked is False  # within grace
    settings.PAST_DUE_GRACE_DAYS = 0
    assert subscription_for_enforcement(tenant=tenant).blocked is True
    body = client_for(tenant, ["billing"]).get("/v1/subscription").json()
    assert body["status"] == "past_due" and body["payment_blocked"] is True

    # A working card; the invoice is paid, and the emulator's own webhook clears the flag.
    good = stripe_api.PaymentMethod.attach("pm_card_visa", customer=customer)
    stripe_api.Customer.modify(customer, invoice_settings={"default_payment_method": good.id})
    assert stripe_api.Invoice.pay(invoice["id"]).status == "paid"

    def is_active():
        row = Subscription.objects.for_tenant(tenant).get()
        return row if row.status == "active" else None

    wait_for(lambda: StripeEvent.objects.filter(type="invoice.payment_succeeded").exists(),
             what="the emulator's delivery")  # fmt: skip

    def is_paid():
        mirrored = Invoice.objects.for_tenant(tenant).filter(pk=invoice["id"]).first()
        return mirrored if mirrored is not None and mirrored.status == "paid" else None

    # NOTE: the subscription and the invoice are separate events, processed in any order:
    # keep the worker until both have landed.
    with platform_worker():
        row = wait_for(is_active, timeout=20, what="the paid webhook")
        paid = wait_for(is_paid, timeout=20, what="the invoice mirrored as paid")
    assert row.past_due_since is None
    assert subscription_for_enforcement(tenant=tenant).blocked is False
    assert (paid.status, paid.amount_paid) == ("paid", invoice["total"])
    listed = client_for(tenant, ["billing"]).get("/v1/invoices").json()["data"]
    assert invoice["id"] in [i["id"] for i in listed]


@pytest.mark.django_db
def test_events_about_strangers_change_nothing(tenant, stripe_api):
    from billing.webhooks import stripe_event_process, stripe_event_record

    subscription_change(tenant=tenant, plan_slug="pro")
    ours = Subscription.objects.for_tenant(tenant).get().stripe_customer_id
    before = _state(tenant)
    stranger = stripe_api.Customer.create(name="not a tenant")
    card = stripe_api.PaymentMethod.attach("pm_card_visa", customer=stranger.id)
    stripe_api.Customer.modify(stranger.id, invoice_settings={"default_payment_method": card.id})
    theirs = stripe_api.Subscription.create(
        customer=stranger.id, items=[{"plan": "margin-pro-v1"}]
    ).to_dict()
    events = [
        _event("customer.subscription.created", theirs),
        _event("customer.subscription.updated", {**theirs, "customer": None}),
        _event("invoice.paid", {"id": theirs["latest_invoice"], "customer": stranger.id}),
        _event("invoice.paid", {"id": theirs["latest_invoice"], "customer": ""}),
        # Our customer's id on someone else's subscription.
        _event("customer.subscription.updated", {**theirs, "customer": ours}),
    ]
    for event in events:
        assert stripe_event_record(event=event)
        assert stripe_event_process(event_id=event["id"])
    assert _state(tenant) == before
    assert not Invoice.objects.unscoped().filter(pk=theirs["latest_invoice"]).exists()
    # Our customer, but an invoice Stripe does not have: nothing to list.
    missing = _event("invoice.paid", {"id": "in_nowhere", "customer": ours})
    assert stripe_event_record(event=missing)
    assert stripe_event_process(event_id=missing["id"])
    assert not Invoice.objects.unscoped().filter(pk="in_nowhere").exists()


@pytest.mark.django_db
def test_a_subscription_made_in_stripe_is_adopted_without_billing_the_free_month(
    tenant, stripe_api, django_capture_on_commit_callbacks
):
    from billing.stripe_sync import plans_sync_to_stripe
    from billing.subscriptions import subscription_get_or_create
    from billing.webhooks import stripe_event_process, stripe_event_record

    subscription_get_or_create(tenant=tenant)
    plans_sync_to_stripe()
    customer = stripe_api.Customer.create(name=tenant.name)
    card = stripe_api.PaymentMethod.attach("pm_card_visa", customer=customer.id)
    stripe_api.Customer.modify(customer.id, invoice_settings={"default_payment_method": card.id})
    Subscription.objects.for_tenant(tenant).update(stripe_customer_id=customer.id)
    # An operator subscribes the tenant in Stripe's dashboard.
    remote = stripe_api.Subscription.create(
        customer=customer.id, items=[{"plan": "margin-pro-v1"}]
    ).to_dict()
    event = _event("customer.subscription.created", remote)
    with django_capture_on_commit_callbacks() as callbacks:
        assert stripe_event_record(event=event) and stripe_event_process(event_id=event["id"])
    sub = Subscription.objects.for_tenant(tenant).get()
    assert (sub.plan_id, sub.status, sub.stripe_subscription_id) == (
        "pro@1",
        "active",
        remote["id"],
    )
    assert callbacks == []  # no usage push for the calendar month spent on free


def test_an_event_larger_than_any_stripe_sends_is_413_before_its_body_is_read(live_server):
    body = b'{"id": "evt_big", "pad": "' + b"x" * (1024 * 1024) + b'"}'
    response = _post(live_server.url, body, {"Stripe-Signature": sign(body)})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert not StripeEvent.objects.filter(id="evt_big").exists()
