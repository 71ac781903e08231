"""Plans to Stripe: the sync (command, admin action) makes each paid plan version's
Product and Plan once, finds them again when their ids are lost, makes again what another
account lacks, and refuses a plan Stripe charges otherwise."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from billing.stripe_sync import plans_sync_to_stripe
from plans.models import Plan

pytestmark = pytest.mark.django_db


def test_plans_sync_is_idempotent(stripe_api, capsys):
    first = {p.id: (p.stripe_product_id, p.stripe_plan_id) for p in plans_sync_to_stripe()}
    call_command("sync_plans_to_stripe")
    assert "pro@1: margin-pro / margin-pro-v1" in capsys.readouterr().out
    Plan.objects.update(stripe_product_id="", stripe_plan_id="")  # ids lost: found again
    again = {p.id: (p.stripe_product_id, p.stripe_plan_id) for p in plans_sync_to_stripe()}
    assert first == again == {"pro@1": ("margin-pro", "margin-pro-v1"),
                              "scale@1": ("margin-scale", "margin-scale-v1")}  # fmt: skip
    # (pro@1's: other tests of the session make other versions' plans.)
    ours = [p for p in stripe_api.Plan.list(limit=100).data if p.id.startswith("margin-pro-v1")]
    assert [(p.id, p.amount, p.interval) for p in ours] == [("margin-pro-v1", 4900, "month")]


def test_plans_sync_makes_again_what_the_stripe_account_lacks(stripe_api, capsys):
    """Stored ids from another Stripe account (a test key's before the live one's, an
    emulator restarted): the sync said it synced them and made nothing, and every upgrade
    was refused (an outside audit). Now what is missing is made, under the stored ids."""
    import uuid

    plans_sync_to_stripe()
    gone = f"margin-gone-{uuid.uuid4().hex[:8]}"
    Plan.objects.filter(pk="pro@1").update(stripe_product_id=gone, stripe_plan_id=f"{gone}-v1")
    call_command("sync_plans_to_stripe")
    assert f"pro@1: {gone} / {gone}-v1" in capsys.readouterr().out
    made = stripe_api.Plan.retrieve(f"{gone}-v1")
    assert (made.amount, made.interval, made.product) == (4900, "month", gone)
    assert stripe_api.Product.retrieve(gone).metadata["plan_slug"] == "pro"


def test_a_plan_stripe_charges_otherwise_waits_on_the_operator(stripe_api):
    """Found under the version's id with other terms: not for sale until the operator acts,
    so its 503 says to come back in a minute, not in seconds (a review)."""
    import uuid

    from billing.stripe_sync import StripePlanMismatch

    odd = f"margin-odd-{uuid.uuid4().hex[:8]}"
    stripe_api.Product.create(id=odd, name="odd")
    stripe_api.Plan.create(id=f"{odd}-v1", product=odd, amount=1, currency="usd", interval="month")
    Plan.objects.filter(pk="pro@1").update(stripe_product_id=odd, stripe_plan_id=f"{odd}-v1")
    with pytest.raises(StripePlanMismatch) as refused:
        plans_sync_to_stripe(plans=[Plan.objects.get(pk="pro@1")])
    assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "60"}


def test_the_sync_says_when_stripe_cannot_be_reached_not_a_traceback(stripe_api, settings):
    from django.core.management.base import CommandError

    from deploy.embedded_redis import free_port

    settings.STRIPE_API_BASE = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    Plan.objects.update(stripe_product_id="", stripe_plan_id="")  # so Stripe is asked
    with pytest.raises(CommandError, match=r"^Stripe: "):
        call_command("sync_plans_to_stripe")
