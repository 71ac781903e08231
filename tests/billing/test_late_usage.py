"""Usage that reaches the ledger after its period's last push is billed all the same: an
event recorded after the renewal's push, calls answered in the moment a tenant moves to
free, usage since the last hourly push when Stripe cancels the subscription. And two pushes
at once bill growth once."""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from billing.invoicing import usage_charges_push
from billing.models import Reconciliation, Subscription, UsageChargePush
from billing.periods import billing_period_record
from billing.reconciliation import reconciliation_run
from billing.subscriptions import subscription_change, subscription_refresh_from_stripe
from billing.tasks import usage_push_all_task
from plans.models import Plan
from tests.billing.helpers import euro_plan, period_set, wait_for
from tests.factories import ledger_row

pytestmark = pytest.mark.django_db


def _usage(tenant, inputs, *, at, plan_id):
    ledger_row(
        event_id=f"req_{uuid.uuid4().hex}", kind="inference", tenant=tenant, api_key_id="key_x",
        livemode=True, model="minilm-l6", inputs=inputs, tokens=inputs, compute_ms=1.0,
        occurred_at=at, plan_id=plan_id,
    )  # fmt: skip


def _pushed(tenant, start):
    pushes = UsageChargePush.objects.for_tenant(tenant).filter(period_start=start)
    return sorted(push.amount for push in pushes)


def _in_stripe(api, customer_id, start):
    """Our usage items for the period that Stripe holds: (amount, subscription) each."""
    items = [i.to_dict() for i in api.InvoiceItem.list(customer=customer_id, limit=100).data]
    ours = [i for i in items if i["metadata"].get("period_start") == str(int(start.timestamp()))]
    return sorted((i["amount"], i.get("subscription")) for i in ours)


def test_usage_recorded_after_the_renewal_push_goes_on_the_next_invoice(
    tenant, stripe_api, client_for
):
    sub = subscription_change(tenant=tenant, plan_slug="pro")
    now = timezone.now()
    old_start, old_end = now - timedelta(days=31), now - timedelta(days=1)
    sub.current_period_start, sub.current_period_end = old_start, old_end
    sub.save()
    billing_period_record(sub=sub)
    _usage(tenant, 150_000, at=old_start + timedelta(days=3), plan_id=sub.plan_id)
    sub.current_period_start, sub.current_period_end = old_end, old_end + timedelta(days=30)
    sub.save()
    billing_period_record(sub=sub)
    usage_charges_push(tenant=tenant, start=old_start, end=old_end)  # the renewal's push
    assert _pushed(tenant, old_start) == [2000]

    # A call answered a millisecond before the period closed, its event stored only now
    # (a consumer that was down): 50,000 more inputs at 40 per 1,000.
    _usage(tenant, 50_000, at=old_end - timedelta(milliseconds=1), plan_id=sub.plan_id)
    late = usage_charges_push(tenant=tenant, start=old_start, end=old_end)  # the hourly sweep
    assert [push.amount for push in late] == [2000]
    assert late[0].description.endswith(f"(usage of {old_start:%Y-%m-%d} to {old_end:%Y-%m-%d})")
    assert _in_stripe(stripe_api, sub.stripe_customer_id, old_start) == [
        (2000, sub.stripe_subscription_id), (2000, sub.stripe_subscription_id)
    ]  # fmt: skip
    assert usage_charges_push(tenant=tenant, start=old_start, end=old_end) == []
    row = reconciliation_run(tenant=tenant, start=old_start)
    assert (row.ledger_amount, row.stripe_amount, row.difference) == (4000, 4000, 0)
    # Both of the closed period's items are on the next invoice (pushed after it closed), and
    # the upcoming invoice shows them (it dropped every usage item of Stripe's preview, to
    # put the ledger's figures for this period in their place).
    lines = client_for(tenant, ["billing"]).get("/v1/invoices/upcoming").json()["lines"]
    late_lines = [line for line in lines if line["description"].endswith(f"{old_end:%Y-%m-%d})")]
    assert [(line["key"], line["amount"]) for line in late_lines] == [("usage:standard", 2000)] * 2


def test_calls_answered_as_the_tenant_moves_to_free_are_billed_on_an_invoice_of_their_own(
    tenant, stripe_api, caplog
):
    sub = subscription_change(tenant=tenant, plan_slug="pro")
    pro_id, pro_start, customer = sub.plan_id, sub.current_period_start, sub.stripe_customer_id
    cancelled = sub.stripe_subscription_id
    _usage(tenant, 150_000, at=timezone.now(), plan_id=pro_id)
    sub = subscription_change(tenant=tenant, plan_slug="free")  # final push, then cancel
    free_start = sub.current_period_start
    assert _pushed(tenant, pro_start) == [2000]
    # A call answered on pro just before the switch, its event stored just after it.
    _usage(tenant, 20_000, at=free_start - timedelta(milliseconds=5), plan_id=pro_id)
    assert usage_charges_push(tenant=tenant) == []  # free's own period: nothing to invoice

    caplog.set_level(logging.ERROR, logger="billing.invoicing")
    late = usage_charges_push(tenant=tenant, start=pro_start, end=free_start)
    assert [push.amount for push in late] == [800]
    # On the customer, pending, with no subscription left to take it: an invoice of its own
    # is asked for. (localstripe cannot make one for a customer with no live subscription:
    # it answers 404, which leaves the item pending and says so; Stripe makes and collects it.)
    assert _in_stripe(stripe_api, customer, pro_start) == [(800, None), (2000, cancelled)]
    assert "left pending on Stripe customer" in caplog.text
    row = reconciliation_run(tenant=tenant, start=pro_start)
    assert (row.ledger_amount, row.stripe_amount, row.difference) == (2800, 2800, 0)
    # The push waits for its invoice, asked for again at each push of the tenant, until
    # Stripe makes it or the tenant subscribes again (the new subscription's next invoice
    # takes the customer's pending items).
    awaiting = UsageChargePush.objects.for_tenant(tenant).filter(awaiting_invoice=True)
    assert [push.amount for push in awaiting] == [800]
    caplog.clear()
    usage_charges_push(tenant=tenant, start=pro_start, end=free_start)
    assert "left pending on Stripe customer" in caplog.text
    subscription_change(tenant=tenant, plan_slug="pro")
    usage_charges_push(tenant=tenant)
    assert not awaiting.all().exists()


def test_a_declined_return_to_a_paid_plan_leaves_late_usage_pending_for_the_next_invoice(
    tenant, stripe_api, client_for
):
    """The declined first invoice of a new subscription had swept up the customer's pending
    late usage, and voiding it voided that usage: served, pushed, never billed."""
    sub = subscription_change(tenant=tenant, plan_slug="pro")
    pro_id, pro_start, customer = sub.plan_id, sub.current_period_start, sub.stripe_customer_id
    sub = subscription_change(tenant=tenant, plan_slug="free")
    _usage(tenant, 120_000, at=sub.current_period_start - timedelta(milliseconds=5), plan_id=pro_id)
    [late] = usage_charges_push(tenant=tenant, start=pro_start, end=sub.current_period_start)
    assert late.amount == 800 and _in_stripe(stripe_api, customer, pro_start) == [(800, None)]

    card = stripe_api.PaymentMethod.attach("pm_card_chargeCustomerFail", customer=customer)
    stripe_api.Customer.modify(customer, invoice_settings={"default_payment_method": card.id})
    refused = client_for(tenant, ["billing"]).post(
        "/v1/subscription", {"plan": "pro"}, format="json"
    )
    assert refused.status_code == 402, refused.json()
    invoices = stripe_api.Invoice.list(customer=customer).data
    [voided] = [invoice for invoice in invoices if invoice.status == "void"]
    assert 800 in [line.amount for line in voided.lines.data]  # it had taken the usage...
    items = [
        i for i in stripe_api.InvoiceItem.list(customer=customer, limit=100).data if not i.invoice
    ]
    assert [(i.amount, i.metadata["line"]) for i in items] == [(800, late.line)]  # ...now back
    late.refresh_from_db()
    assert late.stripe_invoice_item_id == items[0].id and late.awaiting_invoice

    good = stripe_api.PaymentMethod.attach("pm_card_visa", customer=customer)
    stripe_api.Customer.modify(customer, invoice_settings={"default_payment_method": good.id})
    sub = subscription_change(tenant=tenant, plan_slug="pro")
    first = stripe_api.Invoice.list(subscription=sub.stripe_subscription_id).data[-1]
    assert 800 in [line.amount for line in first.lines.data] and first.status == "paid"


def test_an_invoice_items_line_is_known_in_both_shapes_stripe_answers_in():
    """The emulator answers in the shape of API versions before 2025-03 (``type``,
    ``invoice_item``); the version the stripe library pins now names the item in the line's
    ``parent``, and a subscription's own line is not one to put back."""
    from billing.stripe_subscribe import _swept_item

    old = {"type": "invoiceitem", "invoice_item": "ii_old"}
    new = {
        "parent": {
            "type": "invoice_item_details",
            "invoice_item_details": {"invoice_item": "ii_new", "proration": False},
        }
    }
    plan = {
        "parent": {
            "type": "subscription_item_details",
            "subscription_item_details": {"subscription_item": "si_1"},
        }
    }
    assert [_swept_item(line) for line in (old, new, plan, {"type": "subscription"})] == [
        "ii_old", "ii_new", None, None,
    ]  # fmt: skip


def test_a_fine_tune_that_finishes_after_a_move_to_free_is_billed_on_the_plan_that_admitted_it(
    tenant, stripe_api, caplog
):
    """Subscribe, queue a job, move to free: the job finished in free's period, its usage
    priced on pro (5 cents on /v1/usage), and nothing pushed it (free's period was never
    invoiced) nor reconciled it: fine-tuning for free."""
    sub = subscription_change(tenant=tenant, plan_slug="pro")
    customer, pro_id = sub.stripe_customer_id, sub.plan_id
    sub = subscription_change(tenant=tenant, plan_slug="free")
    free_start = sub.current_period_start
    ledger_row(
        event_id="ftjob_late", kind="fine_tune", tenant=tenant, api_key_id="key_x",
        livemode=True, model="minilm-l6", inputs=256, tokens=10_000, compute_ms=1.0,
        occurred_at=timezone.now(), plan_id=pro_id,
    )  # fmt: skip
    caplog.set_level(logging.ERROR, logger="billing.invoicing")
    pushed = usage_charges_push(tenant=tenant)  # free's own period, as the beat runs it
    assert [(push.line, push.amount) for push in pushed] == [("finetune", 5)]
    assert _in_stripe(stripe_api, customer, free_start) == [(5, None)]
    row = reconciliation_run(tenant=tenant)
    assert (row.ledger_amount, row.stripe_amount, row.difference) == (5, 5, 0)
    assert usage_charges_push(tenant=tenant) == []  # pushed once


def test_usage_since_the_last_hourly_push_is_billed_when_stripe_cancels(
    tenant, stripe_api, django_capture_on_commit_callbacks
):
    sub = subscription_change(tenant=tenant, plan_slug="pro")
    start = sub.current_period_start
    _usage(tenant, 150_000, at=timezone.now(), plan_id=sub.plan_id)
    usage_charges_push(tenant=tenant)  # the hourly push: 2,000
    _usage(tenant, 30_000, at=timezone.now(), plan_id=sub.plan_id)  # 1,200 since
    stripe_api.Subscription.cancel(sub.stripe_subscription_id)  # dunning gave up
    with django_capture_on_commit_callbacks(execute=True):
        subscription_refresh_from_stripe(
            customer_id=sub.stripe_customer_id, stripe_subscription_id=sub.stripe_subscription_id,
            snapshot={"id": sub.stripe_subscription_id}, event_created=0,
        )  # fmt: skip
    now_on = Subscription.objects.for_tenant(tenant).get()
    assert (now_on.plan_id, now_on.stripe_subscription_id) == ("free@1", "")
    ended = now_on.current_period_start  # where the paid period was cut
    late = usage_charges_push(tenant=tenant, start=start, end=ended)
    assert [push.amount for push in late] == [1200]
    assert _pushed(tenant, start) == [1200, 2000]


def test_the_hourly_beat_sweeps_periods_closed_this_week(
    tenant, other_tenant, live_server, platform_worker, stripe_api
):
    sub = subscription_change(tenant=tenant, plan_slug="pro")
    now = timezone.now()
    old_start, old_end = now - timedelta(days=31), now - timedelta(days=1)
    period_set(tenant, old_start, old_end)
    period_set(tenant, old_end, old_end + timedelta(days=30))
    _usage(tenant, 101_000, at=old_end - timedelta(seconds=1), plan_id=sub.plan_id)
    _usage(other_tenant, 500, at=now, plan_id="")  # free, never on Stripe: not swept
    with platform_worker():
        usage_push_all_task.apply_async()
        push = wait_for(
            lambda: (
                UsageChargePush.objects.for_tenant(tenant)
                .filter(period_start=old_start, pushed_at__isnull=False)
                .first()
            ),
            what="the closed period's late push",
        )
    assert (push.line, push.amount) == ("usage:standard", 40)
    assert not UsageChargePush.objects.for_tenant(other_tenant).exists()
    assert not Reconciliation.objects.for_tenant(other_tenant).exists()


@pytest.mark.django_db(transaction=True)
def test_two_pushes_at_once_bill_the_growth_once(tenant, stripe_api, monkeypatch):
    """One push reads what was pushed; another starts right after that read. (What was
    pushed and how many pushes there are were two reads: a push landing between them
    paired the old total with the next number, and billed the growth twice.) Pushes now
    take the tenant's lock: the second waits for the first, here past its wait, and says
    so (``PushInProgress``, which the tasks retry)."""
    from django.db.models import QuerySet

    from billing import invoicing

    monkeypatch.setattr(invoicing, "PUSH_WAIT_S", 0.5)
    outcomes: dict[str, object] = {}

    sub = subscription_change(tenant=tenant, plan_slug="pro")
    _usage(tenant, 150_000, at=timezone.now(), plan_id=sub.plan_id)
    usage_charges_push(tenant=tenant)  # 2,000
    _usage(tenant, 10_000, at=timezone.now(), plan_id=sub.plan_id)  # grows by 400
    aggregate = QuerySet.aggregate
    other_done = threading.Event()

    def read_then_let_the_other_run(self, *args, **kwargs):
        seen = aggregate(self, *args, **kwargs)
        first = threading.current_thread().name == "first"
        if self.model is UsageChargePush and first and not other_done.is_set():
            other = threading.Thread(target=push_in_thread, name="second")
            other.start()
            other.join(30)
            other_done.set()
        return seen

    def push_in_thread():
        name = threading.current_thread().name
        try:
            outcomes[name] = [p.amount for p in usage_charges_push(tenant=tenant)]
        except invoicing.PushInProgress as exc:
            outcomes[name] = exc
        finally:
            connection.close()

    monkeypatch.setattr(QuerySet, "aggregate", read_then_let_the_other_run)
    first = threading.Thread(target=push_in_thread, name="first")
    first.start()
    first.join(60)
    assert other_done.is_set()
    assert outcomes["first"] == [400]
    assert isinstance(outcomes["second"], invoicing.PushInProgress)
    assert _pushed(tenant, sub.current_period_start) == [400, 2000]
    held = _in_stripe(stripe_api, sub.stripe_customer_id, sub.current_period_start)
    assert [amount for amount, _ in held] == [400, 2000]


def test_usage_billed_in_a_free_period_keeps_the_accounts_currency(tenant, stripe_api):
    euro_plan(
        fine_tuning=True, finetune_unit_amount=Plan.objects.get(pk="pro@1").finetune_unit_amount
    )
    sub = subscription_change(tenant=tenant, plan_slug="euro")
    customer = sub.stripe_customer_id
    sub = subscription_change(tenant=tenant, plan_slug="free")
    ledger_row(
        event_id="ftjob_late", kind="fine_tune", tenant=tenant, api_key_id="key_x",
        livemode=True, model="minilm-l6", inputs=256, tokens=1_000_000, compute_ms=1.0,
        occurred_at=timezone.now(), plan_id="euro@1",
    )  # fmt: skip
    pushed = usage_charges_push(tenant=tenant)
    assert [(p.amount, p.currency) for p in pushed] == [(500, "eur")]  # it said usd
    items = [i.to_dict() for i in stripe_api.InvoiceItem.list(customer=customer, limit=100).data]
    assert [(i["amount"], i["currency"]) for i in items if i["amount"] == 500] == [(500, "eur")]


def test_a_free_period_with_nothing_to_check_never_asks_stripe(tenant, stripe_api, monkeypatch):
    """The daily run covers every tenant that ever had a Stripe customer: an ex-customer's
    free period with no paid usage and nothing pushed is skipped before Stripe is read."""
    from billing import reconciliation

    subscription_change(tenant=tenant, plan_slug="pro")
    subscription_change(tenant=tenant, plan_slug="free")

    def not_asked(**kwargs):
        raise AssertionError("Stripe was read for a period with nothing to check")

    monkeypatch.setattr(reconciliation, "stripe_usage_total", not_asked)
    assert reconciliation_run(tenant=tenant) is None
