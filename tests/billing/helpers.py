"""Helpers for the billing tests: Stripe-style signing and delivery, polling."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
from django.db import OperationalError

API_KEY = "sk_test_margin_billing"
SECRETS = ["whsec_test_current", "whsec_test_previous"]


def sign(payload: bytes, secret: str = SECRETS[0], timestamp: int | None = None) -> str:
    """A Stripe-Signature header, computed as Stripe documents it."""
    moment = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{moment}.".encode() + payload, hashlib.sha256)
    return f"t={moment},v1={mac.hexdigest()}"


def deliver(url: str, event: dict[str, Any], **signing: Any) -> httpx.Response:
    payload = json.dumps(event).encode()
    return httpx.post(
        f"{url}/webhooks/stripe",
        content=payload,
        headers={"Content-Type": "application/json", "Stripe-Signature": sign(payload, **signing)},
        timeout=10,
    )


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except OperationalError:  # SQLite's shared-cache lock while the worker writes
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def euro_plan(**terms: Any) -> Any:
    """A paid plan billed in EUR, on pro's terms unless ``terms`` says otherwise."""
    from plans.models import Plan

    pro = Plan.objects.get(pk="pro@1")
    return Plan.objects.create(
        id="euro@1", slug="euro", name="Euro", currency="eur", base_fee=4500,
        included_inputs=pro.included_inputs, overage_tiers=pro.overage_tiers, **terms,
    )  # fmt: skip


def declining_customer(api: Any, tenant: Any, client: Any) -> Any:
    """The tenant's Stripe customer, made ahead with a card that is declined."""
    from billing.models import Subscription

    customer = api.Customer.create(name=tenant.name, metadata={"tenant_id": tenant.id})
    card = api.PaymentMethod.attach("pm_card_chargeCustomerFail", customer=customer.id)
    api.Customer.modify(customer.id, invoice_settings={"default_payment_method": card.id})
    client.get("/v1/subscription")  # the subscription row
    Subscription.objects.for_tenant(tenant).update(stripe_customer_id=customer.id)
    return customer


def period_set(tenant: Any, start: Any, end: Any) -> None:
    """The tenant's subscription as if its current period were [start, end), recorded as
    the webhook of a renewal records it."""
    from billing.models import Subscription
    from billing.periods import billing_period_record

    Subscription.objects.for_tenant(tenant).update(
        current_period_start=start, current_period_end=end
    )
    billing_period_record(sub=Subscription.objects.for_tenant(tenant).get())
