"""The Stripe mirrors keep the newest read: handlers of one invoice or subscription run side by
side and re-read Stripe, and a read begun before a later one (or before a change of ours)
must never be written over it. Stamps are unix microseconds (``stripe_moment``): a re-read
is stamped when it began, a change of ours when Stripe answered it. With whole seconds, a
read of the same second written last won: a paid invoice mirrored back to open (the tenant
then refused paid plans for an unpaid invoice), a plan change undone in the row while
Stripe billed the new plan. And billing 0008 turns stored seconds into microseconds."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

import billing.subscriptions as subscriptions
from billing.models import Invoice, PlanSpan, Subscription
from billing.stripe_client import PaymentRequired, as_dict, stripe_moment
from billing.subscriptions import subscription_change, subscription_refresh_from_stripe
from billing.unpaid import past_due_clear
from billing.webhooks import _mirror_invoice
from tests.factories import TenantFactory, subscribe

pytestmark = pytest.mark.django_db


def _invoice(status: str, paid: int) -> dict[str, object]:
    now = int(timezone.now().timestamp())
    return {
        "id": "in_order", "status": status, "currency": "usd", "amount_due": 4900,
        "amount_paid": paid, "total": 4900, "period_start": now - 86400 * 30,
        "period_end": now, "created": now - 86400 * 2, "number": "N-1",
    }  # fmt: skip


def _past_due(tenant) -> None:
    subscribe(tenant, "free")
    Subscription.objects.for_tenant(tenant).update(
        status="past_due", past_due_since=timezone.now() - timedelta(days=30),
        stripe_customer_id="cus_order", stripe_subscription_id="",
    )  # fmt: skip


def test_a_paid_invoice_stays_paid_whatever_order_the_reads_land_in(tenant):
    """The payment-failed handler read the invoice (open) 0.5 s before the paid handler read
    it (paid), and wrote last; then a read stamped later still says open (a stale replica):
    the mirror stays paid, the tenant is not past due, and may move to a paid plan."""
    _past_due(tenant)
    began = stripe_moment()
    _mirror_invoice(_invoice("paid", 4900), tenant.pk, began + 500_000)  # the newer read
    past_due_clear(tenant_id=tenant.pk)
    _mirror_invoice(_invoice("open", 0), tenant.pk, began)  # the older read, written last
    _mirror_invoice(_invoice("open", 0), tenant.pk, began + 500_000)  # a tie: not newer
    _mirror_invoice(_invoice("open", 0), tenant.pk, began + 900_000)  # settled already
    past_due_clear(tenant_id=tenant.pk)
    mirrored = Invoice.objects.for_tenant(tenant).get(pk="in_order")
    assert (mirrored.status, mirrored.amount_paid) == ("paid", 4900)
    assert mirrored.stripe_updated_at == began + 500_000
    assert Subscription.objects.for_tenant(tenant).get().status == "active"


def test_a_newer_read_still_moves_an_unsettled_invoice_on(tenant):
    """Open, then uncollectible (written off), then paid after all: each newer read lands."""
    _past_due(tenant)
    began = stripe_moment()
    for step, (status, paid) in enumerate([("open", 0), ("uncollectible", 0), ("paid", 4900)]):
        _mirror_invoice(_invoice(status, paid), tenant.pk, began + step)
        assert Invoice.objects.for_tenant(tenant).get(pk="in_order").status == status
    _mirror_invoice(_invoice("void", 0), tenant.pk, began + 10)  # paid is for good
    assert Invoice.objects.for_tenant(tenant).get(pk="in_order").status == "paid"


def test_a_read_begun_before_a_plan_change_does_not_undo_it(tenant, stripe_api, monkeypatch):
    """A webhook's handler read the subscription (on pro) just before the tenant's change to
    scale; it takes the row's lock after the change committed: its read is older than the
    change, and the row stays on scale, as Stripe bills it, with no span back to pro."""
    sub = subscription_change(tenant=tenant, plan_slug="pro")
    stale = as_dict(stripe_api.Subscription.retrieve(sub.stripe_subscription_id))
    read_began = stripe_moment()
    sub = subscription_change(tenant=tenant, plan_slug="scale")

    class Api:
        class Subscription:
            @staticmethod
            def retrieve(*args, **kwargs):
                return stale

    monkeypatch.setattr(subscriptions, "stripe_api", lambda: Api)
    monkeypatch.setattr(subscriptions, "stripe_moment", lambda: read_began)
    subscription_refresh_from_stripe(
        customer_id=sub.stripe_customer_id, stripe_subscription_id=sub.stripe_subscription_id,
        snapshot={}, event_created=0,
    )  # fmt: skip
    row = Subscription.objects.for_tenant(tenant).select_related("plan").get()
    assert row.plan.slug == "scale"
    spans = PlanSpan.objects.for_tenant(tenant).order_by("start")
    assert [span.plan.slug for span in spans][-1] == "scale"
    # A read begun after the change is newer, and lands (here: Stripe's own, on scale).
    monkeypatch.undo()
    subscription_refresh_from_stripe(
        customer_id=sub.stripe_customer_id, stripe_subscription_id=sub.stripe_subscription_id,
        snapshot={}, event_created=0,
    )  # fmt: skip
    row = Subscription.objects.for_tenant(tenant).get()
    assert row.plan.slug == "scale" and row.stripe_updated_at > read_began


def test_a_paid_plan_is_refused_only_while_an_invoice_is_really_unpaid(tenant):
    """The cost of the old order: the open read written last kept the tenant off paid plans."""
    _past_due(tenant)
    began = stripe_moment()
    _mirror_invoice(_invoice("open", 0), tenant.pk, began)
    Invoice.objects.for_tenant(tenant).update(created_at=timezone.now() - timedelta(days=2))
    with pytest.raises(PaymentRequired):
        subscription_change(tenant=tenant, plan_slug="pro")


@pytest.mark.django_db(transaction=True)
def test_0008_turns_stored_seconds_into_the_last_microsecond_of_each_and_back():
    before, after = [("billing", "0007_plan_spans_from_deploy")], None
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    try:
        old = executor.loader.project_state(before).apps
        tenant = TenantFactory()
        plan = old.get_model("plans", "Plan").objects.filter(slug="free").first()
        now = timezone.now()
        old.get_model("billing", "Subscription").objects.create(
            tenant_id=tenant.pk, plan_id=plan.pk, current_period_start=now,
            current_period_end=now + timedelta(days=30), stripe_updated_at=1_800_000_000,
        )  # fmt: skip
        old.get_model("billing", "Invoice").objects.create(
            id="in_old", tenant_id=tenant.pk, status="paid", currency="usd", created_at=now,
            stripe_updated_at=0,
        )  # fmt: skip
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
    sub = Subscription.objects.for_tenant(tenant).get()
    assert sub.stripe_updated_at == 1_800_000_000_999_999
    assert Invoice.objects.for_tenant(tenant).get().stripe_updated_at == 0  # never read
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    try:
        old = executor.loader.project_state(before).apps
        back = old.get_model("billing", "Subscription").objects.get(tenant_id=tenant.pk)
        assert back.stripe_updated_at == 1_800_000_000
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(after or executor.loader.graph.leaf_nodes())


def test_a_first_mirror_that_a_newer_first_mirror_beat_goes_through_the_check(tenant, monkeypatch):
    """Two handlers of an invoice not mirrored yet both found no row: the newer read
    inserted, and the older one's update_or_create took the unique key's error for "it
    exists" and wrote over it unchecked (a review). Now it is checked, under the lock."""
    import billing.webhooks as webhooks

    began = stripe_moment()
    _mirror_invoice(_invoice("paid", 4900), tenant.pk, began + 500_000)  # the newer, first
    real, looks = webhooks.Invoice.objects.for_tenant, []

    class Blind:  # the older handler's look, taken before the newer one's insert committed
        def select_for_update(self):
            return self

        def filter(self, **kwargs):
            return self

        def first(self):
            return None

    def for_tenant(tenant_id):
        looks.append(tenant_id)
        return Blind() if len(looks) == 1 else real(tenant_id)

    monkeypatch.setattr(webhooks.Invoice.objects, "for_tenant", for_tenant)
    _mirror_invoice(_invoice("open", 0), tenant.pk, began)
    monkeypatch.undo()
    mirrored = Invoice.objects.for_tenant(tenant).get(pk="in_order")
    assert (mirrored.status, mirrored.stripe_updated_at) == ("paid", began + 500_000)


def test_an_invoice_id_stored_under_another_tenant_is_an_error_not_a_loop(tenant, other_tenant):
    from django.db import IntegrityError

    _mirror_invoice(_invoice("open", 0), other_tenant.pk, stripe_moment())
    with pytest.raises(IntegrityError):
        _mirror_invoice(_invoice("open", 0), tenant.pk, stripe_moment())


def test_a_stamp_in_seconds_from_the_release_before_still_orders_reads(tenant):
    """During a rolling deploy the old release's processes write whole seconds: read as the
    last microsecond of that second, not as a moment in 1970."""
    _past_due(tenant)
    now_s = int(time.time())
    _mirror_invoice(_invoice("paid", 4900), tenant.pk, stripe_moment())
    Invoice.objects.for_tenant(tenant).update(status="open", stripe_updated_at=now_s + 60)
    _mirror_invoice(_invoice("paid", 4900), tenant.pk, stripe_moment())  # older than that
    assert Invoice.objects.for_tenant(tenant).get().status == "open"
