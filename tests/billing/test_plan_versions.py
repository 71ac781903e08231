"""An operator's new version of a plan (a price cut) reaches the tenants already on the plan
only when the operator moves them: from the plans admin or ``manage.py move_subscribers``.
Each is a plan change of its own, prorated in Stripe; one that cannot be moved is reported
and left where it was."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from billing.models import Subscription
from plans.models import Plan
from tests.factories import TenantFactory

pytestmark = pytest.mark.django_db


def _local(tenant):
    return Subscription.objects.for_tenant(tenant).select_related("plan").get()


def _cheaper_pro() -> Plan:
    old = Plan.objects.get(pk="pro@1")
    Plan.objects.filter(pk=old.pk).update(is_current=False)
    return Plan.objects.create(
        id="pro@2", slug="pro", version=2, name="Pro", base_fee=3900, is_current=True,
        included_inputs=old.included_inputs, overage_tiers=old.overage_tiers,
        currency=old.currency,
    )  # fmt: skip


def _subscribed(client_for, plan: str = "pro"):
    tenant = TenantFactory()
    client = client_for(tenant, ["billing"])
    assert client.post("/v1/subscription", {"plan": plan}, format="json").status_code == 200
    return tenant, client


def test_the_operator_moves_a_plans_subscribers_onto_its_new_version(
    client_for, stripe_api, admin_client
):
    (first, client), (second, _) = _subscribed(client_for), _subscribed(client_for)
    on_free = TenantFactory()
    client_for(on_free, ["billing"]).get("/v1/subscription")  # a row, on free
    new = _cheaper_pro()
    page = admin_client.post(
        "/admin/plans/plan/",
        {"action": "move_subscribers", "_selected_action": [new.pk]},
        follow=True,
    )
    assert page.status_code == 200
    assert "Moved 2 subscribers onto pro@2" in page.content.decode()
    for tenant in (first, second):
        sub = _local(tenant)
        assert sub.plan_id == "pro@2"
        remote = stripe_api.Subscription.retrieve(sub.stripe_subscription_id).to_dict()
        stripe_plan = Plan.objects.get(pk="pro@2").stripe_plan_id
        assert remote["items"]["data"][0]["plan"]["id"] == stripe_plan
    assert _local(on_free).plan.slug == "free"
    # The tenant sees the new terms on its next request, and its next invoice the new fee.
    plan = client.get("/v1/subscription").json()["plan"]
    assert (plan["id"], plan["version"], plan["amount"]) == ("pro", 2, 3900)
    upcoming = client.get("/v1/invoices/upcoming").json()
    assert ("base_fee", 3900) in [(line["key"], line["amount"]) for line in upcoming["lines"]]


def test_one_that_cannot_be_moved_is_reported_and_the_others_are_moved(client_for, stripe_api):
    (owing, _), (paying, _) = _subscribed(client_for), _subscribed(client_for)
    Subscription.objects.for_tenant(owing).update(
        status=Subscription.Status.PAST_DUE, past_due_since=timezone.now()
    )
    _cheaper_pro()
    with pytest.raises(CommandError, match="1 subscribers were not moved"):
        call_command("move_subscribers", "pro")
    assert (_local(owing).plan_id, _local(paying).plan_id) == ("pro@1", "pro@2")


def test_only_a_current_version_takes_subscribers(client_for, stripe_api, admin_client):
    _subscribed(client_for)
    _cheaper_pro()
    page = admin_client.post(
        "/admin/plans/plan/",
        {"action": "move_subscribers", "_selected_action": ["pro@1", "free@1"]},
        follow=True,
    )
    text = page.content.decode()
    assert "Nobody moved onto pro@1: it is not its plan&#x27;s current version" in text
    assert "Nobody to move onto free@1: free&#x27;s tenants follow" in text
    with pytest.raises(CommandError, match="No plan 'nope'"):
        call_command("move_subscribers", "nope")
