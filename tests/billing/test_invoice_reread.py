"""An upcoming invoice that Stripe refuses to preview: the subscription is read again from
Stripe (``billing/reread.py``), once in a while, and the answer is in the contract's shape
whatever Stripe does meanwhile."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from billing.models import Subscription
from billing.stripe_client import stripe_error_to_api

pytestmark = pytest.mark.django_db


def _local(tenant: Any) -> Subscription:
    return Subscription.objects.for_tenant(tenant).select_related("plan").get()


def _counted(monkeypatch: Any, owner: Any, name: str, error: Exception | None = None) -> list[int]:
    """Count the calls of ``owner.name``; with ``error``, each raises it."""
    calls: list[int] = []
    original = getattr(owner, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if error is not None:
            raise error
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def test_a_subscription_ended_in_stripe_with_its_webhook_lost_is_read_again_for_its_invoice(
    tenant, client_for, stripe_api
):
    """The subscription cancelled in Stripe and its webhook lost: Stripe refuses to preview
    its next invoice. That was a 503 saying a retry would meet the same answer, for up to a
    day (until the daily re-read), while the tenant was served on the paid plan; the refusal
    now re-reads the subscription, and the invoice is the one of what Stripe holds."""
    client = client_for(tenant, ["billing"])
    assert client.post("/v1/subscription", {"plan": "pro"}, format="json").status_code == 200
    stripe_api.Subscription.cancel(_local(tenant).stripe_subscription_id)
    assert client.get("/v1/subscription").json()["plan"]["id"] == "pro"  # no webhook here
    response = client.get("/v1/invoices/upcoming")
    assert response.status_code == 200, response.json()
    assert response.json()["plan"] == "free"
    assert client.get("/v1/subscription").json()["plan"]["id"] == "free"
    # A refusal that a re-read does not explain stays a 503 that says Stripe refused (not
    # 'did not answer', which sent people looking at the network), and waits on the operator.
    refused = stripe_error_to_api(stripe.InvalidRequestError("No such customer", "customer"))
    assert refused.code == "billing_unavailable" and "refused the request" in refused.message
    assert refused.status == 503 and refused.headers == {"Retry-After": "60"}
    down = stripe_error_to_api(stripe.APIConnectionError("connection refused"))
    assert "did not answer" in down.message
    assert down.status == 503 and down.headers == {"Retry-After": "5"}


def test_a_refusal_the_re_read_does_not_explain_is_re_read_once_in_a_while(
    tenant, client_for, stripe_api, monkeypatch
):
    """A lasting refusal paid two more Stripe calls (a re-read and the preview again) on every
    GET, and rewrote the subscription's row each time: now one re-read in five minutes, and
    the preview asked again only when the re-read changed the subscription."""
    client = client_for(tenant, ["billing"])
    assert client.post("/v1/subscription", {"plan": "pro"}, format="json").status_code == 200
    refusal = stripe.InvalidRequestError("This subscription cannot be previewed", None)
    previews = _counted(monkeypatch, stripe_api.Invoice, "create_preview", refusal)
    reads = _counted(monkeypatch, stripe_api.Subscription, "retrieve")
    for _ in range(3):
        response = client.get("/v1/invoices/upcoming")
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "billing_unavailable"
    assert (len(previews), len(reads)) == (3, 1)
    assert _local(tenant).plan.slug == "pro"


def test_a_stripe_unreachable_while_re_reading_is_a_503_in_the_contracts_shape(
    tenant, client_for, stripe_api, monkeypatch
):
    """The re-read's own failure (Stripe unreachable, or rate limiting us) was raised from
    inside the refusal's handler, past the clause that maps Stripe's errors: a bare 500."""
    client = client_for(tenant, ["billing"])
    assert client.post("/v1/subscription", {"plan": "pro"}, format="json").status_code == 200
    stripe_api.Subscription.cancel(_local(tenant).stripe_subscription_id)
    _counted(monkeypatch, stripe_api.Subscription, "retrieve", stripe.APIConnectionError("down"))
    response = client.get("/v1/invoices/upcoming")
    assert response.status_code == 503, response.json()
    assert response.json()["error"]["code"] == "billing_unavailable"
    assert response["Retry-After"] == "5"
    assert "did not answer" in response.json()["error"]["message"]
