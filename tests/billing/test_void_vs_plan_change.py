"""A ledger correction never falls between a move to free's final push and its cancel (a
money review): the cancel invoices the period at once, so a void that checked the period
open before it and committed after it left the customer charged for the voided usage, its
credit on a customer with no subscription, and reconciliation read no difference. A void
now holds the tenant's plan-change lock from its check to its commit, and a paid period cut
short is closed from the cut, before any webhook says so. (That reconciliation counts no
credit stranded on an ended customer as billed: tests/billing/test_plan_share_flows.py.)"""

from __future__ import annotations

import pytest
from django.utils import timezone

import billing.locks as locks
import metering.corrections as corrections
from billing.invoicing import usage_charges_push
from billing.locks import tenant_change_lock
from billing.models import Invoice
from billing.subscriptions import subscription_change
from core.errors import Conflict
from metering.corrections import VoidRefused, usage_record_void
from metering.models import UsageRecord
from tests.metering.test_corrections import call

pytestmark = pytest.mark.django_db


def _voided(tenant, event_id: str) -> bool:
    return UsageRecord.objects.for_tenant(tenant).filter(corrects=event_id).exists()


def test_a_move_to_free_cannot_run_between_a_voids_check_and_its_commit(
    tenant, stripe_api, monkeypatch
):
    """The interleaving the review found: the tenant asks to move to free while a void is
    between its check and its commit. The move waits for the void (here: past its wait, a
    409), so the void's credit is pushed on the live subscription, and invoiced with it."""
    monkeypatch.setattr(locks, "CHANGE_WAIT_S", 0.3)
    sub = subscription_change(tenant=tenant, plan_slug="pro")
    start = sub.current_period_start
    call(tenant, 150_000, at=timezone.now())  # 50,000 over: 2,000
    wrong = call(tenant, 20_000, at=timezone.now())  # 800 more
    real, moves = corrections.period_open, []

    def check_while_the_tenant_moves(**kwargs):
        verdict = real(**kwargs)
        with pytest.raises(Conflict):  # a change in progress: the void's, until it commits
            subscription_change(tenant=tenant, plan_slug="free")
        moves.append("refused")
        return verdict

    monkeypatch.setattr(corrections, "period_open", check_while_the_tenant_moves)
    usage_record_void(event_id=wrong, reason="billed twice by a client retry bug", push=False)
    assert moves == ["refused"] and _voided(tenant, wrong)
    assert [push.amount for push in usage_charges_push(tenant=tenant)] == [2000]
    monkeypatch.setattr(corrections, "period_open", real)
    sub = subscription_change(tenant=tenant, plan_slug="free")  # now it runs
    assert sub.plan.slug == "free" and not sub.stripe_subscription_id
    items = [
        i.to_dict() for i in stripe_api.InvoiceItem.list(customer=sub.stripe_customer_id)
    ]  # fmt: skip
    assert sorted(i["amount"] for i in items if i["metadata"].get("period_start") == str(
        int(start.timestamp())
    )) == [2000]  # fmt: skip


def test_a_void_waits_for_a_plan_change_and_changes_nothing_if_it_lasts(tenant, monkeypatch):
    monkeypatch.setattr(locks, "CHANGE_WAIT_S", 0.3)
    wrong = call(tenant, 10)
    lock = tenant_change_lock(tenant_id=tenant.pk)
    assert lock.acquire()
    try:
        with pytest.raises(VoidRefused, match="plan change of its tenant"):
            usage_record_void(event_id=wrong, reason="a test")
    finally:
        lock.release()
    assert not _voided(tenant, wrong)
    usage_record_void(event_id=wrong, reason="a test")  # once it is over
    assert _voided(tenant, wrong)


def test_a_paid_period_cut_short_by_a_move_to_free_is_closed_before_any_webhook(tenant, stripe_api):
    """Cancelling invoiced the period at once (Stripe's final invoice): a credit pushed after
    it would wait on a customer with no subscription. No invoice is mirrored yet (its
    webhook has not come), and the void is refused all the same, advising a credit note."""
    subscription_change(tenant=tenant, plan_slug="pro")
    on_pro = call(tenant, 150_000, at=timezone.now())
    sub = subscription_change(tenant=tenant, plan_slug="free")
    assert not Invoice.objects.for_tenant(tenant).exists()
    with pytest.raises(VoidRefused, match="credit the customer in Stripe"):
        usage_record_void(event_id=on_pro, reason="a test")
    # Free's own period, which nothing invoiced, is still open to corrections.
    on_free = call(
        tenant, 10, at=sub.current_period_start + (timezone.now() - sub.current_period_start) / 2
    )
    usage_record_void(event_id=on_free, reason="a test")
    assert _voided(tenant, on_free) and not _voided(tenant, on_pro)
