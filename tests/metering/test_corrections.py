"""Ledger corrections (metering.corrections): an operator voids a metered event with a
reason, by command or admin action; one correcting row nets it out of everything that
reads the ledger, in its own billing period, once, and only while that period is open."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError, transaction
from django.utils import timezone

from billing.models import BillingPeriod, Invoice
from billing.periods import billing_period_record
from metering.corrections import VoidRefused, usage_record_void, void_event_id
from metering.models import UsageRecord
from metering.services import usage_record_bulk
from tests.factories import TenantFactory, staff_client, subscribe

pytestmark = pytest.mark.django_db


def call(
    tenant,
    inputs,
    *,
    at=None,
    kind="inference",
    model="minilm-l6",
    tokens=None,
    livemode=True,
    key="key_a",
):
    """An answered call (or a fine-tune) stored as the usage consumer stores it; its id."""
    event_id = (
        f"req_{uuid.uuid4().hex[:24]}" if kind == "inference" else f"ftjob_{uuid.uuid4().hex}"
    )
    outcome = usage_record_bulk(
        events=[{
            "v": 1, "event_id": event_id, "kind": kind, "tenant_id": tenant.pk,
            "api_key_id": key, "livemode": livemode, "model": model, "inputs": inputs,
            "tokens": inputs * 10 if tokens is None else tokens, "compute_ms": 2.0,
            "cached": 0, "cost_micros": "500",
            "occurred_at": (at or timezone.now() - timedelta(seconds=5)).isoformat(),
        }]
    )  # fmt: skip
    assert outcome.inserted == 1, outcome
    return event_id


def usage_total(client):
    total = client.get("/v1/usage").json()["total"]
    return {name: total[name] for name in ("requests", "inputs", "tokens", "amount")}


def test_voiding_a_call_takes_it_off_usage_and_the_upcoming_invoice(tenant, client_for):
    subscribe(tenant, "pro")  # 100,000 inputs included, then 40 per 1,000
    call(tenant, 150_000)
    wrong = call(tenant, 20_000)
    client = client_for(tenant, ["billing"])
    assert usage_total(client) == {
        "requests": 2, "inputs": 170_000, "tokens": 1_700_000, "amount": 2800
    }  # fmt: skip

    correction = usage_record_void(event_id=wrong, reason="duplicate call, client bug", actor="ops")

    # A voided call still counts as a request made; its inputs, tokens and money are gone.
    assert usage_total(client) == {
        "requests": 2, "inputs": 150_000, "tokens": 1_500_000, "amount": 2000
    }  # fmt: skip
    upcoming = client.get("/v1/invoices/upcoming").json()
    usage_lines = {line["key"]: line["amount"] for line in upcoming["lines"]}
    assert usage_lines == {"base_fee": 4900, "usage:standard": 2000}
    original = UsageRecord.objects.for_tenant(tenant).get(event_id=wrong)
    assert (correction.event_id, correction.corrects) == (f"void_{wrong}", wrong)
    assert (correction.inputs, correction.tokens, correction.cached) == (-20_000, -200_000, 0)
    assert (correction.compute_ms, correction.cost_micros) == (0, 0)
    assert correction.occurred_at == original.occurred_at  # in the original's period
    assert (correction.plan_id, correction.api_key_id) == (original.plan_id, "key_a")
    assert (correction.reason, correction.corrected_by) == ("duplicate call, client bug", "ops")
    # The original row is as it was: nothing edited.
    assert (original.inputs, original.corrects, original.reason) == (20_000, "", "")


def test_a_second_void_of_an_event_is_refused_and_changes_nothing(tenant, client_for):
    subscribe(tenant, "pro")
    call(tenant, 150_000)
    wrong = call(tenant, 20_000)
    first = usage_record_void(event_id=wrong, reason="duplicate")
    client = client_for(tenant, ["billing"])
    before = usage_total(client)

    with pytest.raises(VoidRefused, match="voided already"):
        usage_record_void(event_id=wrong, reason="duplicate, again")
    # Two voids racing past the check meet the ledger's own uniqueness guard.
    with pytest.raises(IntegrityError), transaction.atomic():
        UsageRecord.objects.create(
            event_id=void_event_id(wrong), kind="inference", tenant=tenant, api_key_id="key_a",
            model="minilm-l6", inputs=-20_000, tokens=-200_000, compute_ms=0,
            occurred_at=first.occurred_at, corrects=wrong, reason="race",
        )  # fmt: skip
    assert usage_total(client) == before
    assert UsageRecord.objects.for_tenant(tenant).count() == 3


def test_what_cannot_be_voided_is_refused_clearly(tenant):
    call(tenant, 10)
    wrong = call(tenant, 20)
    correction = usage_record_void(event_id=wrong, reason="test")
    with pytest.raises(VoidRefused, match="is a correcting row"):
        usage_record_void(event_id=correction.event_id, reason="undo")
    with pytest.raises(VoidRefused, match="No usage record has event id 'req_nope'"):
        usage_record_void(event_id="req_nope", reason="typo")
    with pytest.raises(VoidRefused, match="Say why"):
        usage_record_void(event_id=call(tenant, 5), reason="  ")
    with pytest.raises(VoidRefused, match="test-mode usage, which is never billed"):
        usage_record_void(event_id=call(tenant, 5, livemode=False), reason="not billed")
    assert UsageRecord.objects.for_tenant(tenant).exclude(corrects="").count() == 1


def test_a_fine_tune_is_voided_by_its_job_id(tenant, client_for):
    subscribe(tenant, "pro")
    job = call(tenant, 0, kind="fine_tune", model="ft:minilm-l6:x:1", tokens=200_000)
    client = client_for(tenant, ["billing"])
    total = client.get("/v1/usage").json()["total"]
    assert total["amount"] > 0  # trained tokens are billed
    # ...reported apart from classifications, which the job is not.
    assert (total["fine_tunes"], total["trained_tokens"]) == (1, 200_000)
    assert (total["requests"], total["tokens"]) == (0, 0)
    correction = usage_record_void(event_id=job, reason="failed job billed")
    assert correction.kind == "fine_tune" and correction.event_id == f"void_{job}"
    total = client.get("/v1/usage").json()["total"]
    assert (total["fine_tunes"], total["trained_tokens"], total["amount"]) == (1, 0, 0)


def test_a_fine_tune_is_reported_apart_from_classification_inputs(tenant, client_for):
    """A job's training examples read as classification inputs (and the job as a call) for
    a model never called: more inputs than the plan's allowance counts (an audit)."""
    subscribe(tenant, "pro")
    call(tenant, 3, model="minilm-l6")
    call(tenant, 20, kind="fine_tune", model="ft:minilm-l6:x:1", tokens=170)
    report = client_for(tenant, ["billing"]).get("/v1/usage?group_by=model").json()
    rows = {row["model"]: row for row in report["data"]}
    tuned = rows["ft:minilm-l6:x:1"]
    assert (tuned["requests"], tuned["inputs"], tuned["tokens"]) == (0, 0, 0)
    assert (tuned["fine_tunes"], tuned["trained_tokens"]) == (1, 170)
    base = rows["minilm-l6"]
    assert (base["requests"], base["inputs"], base["fine_tunes"]) == (1, 3, 0)
    total = report["total"]
    assert (total["requests"], total["inputs"], total["fine_tunes"]) == (1, 3, 1)
    assert total["amount"] == sum(row["amount"] for row in report["data"])


def test_a_long_event_id_gets_a_correcting_id_of_its_own():
    long_a, long_b = "x" * 60 + "a", "x" * 60 + "b"
    assert void_event_id("req_" + "a" * 24) == "void_req_" + "a" * 24
    assert len(void_event_id(long_a)) == 64 and void_event_id(long_a) != void_event_id(long_b)


def _periods(tenant):
    """A period that ended a day ago (recorded as Stripe's renewal records it) and the
    current one."""
    sub = subscribe(tenant, "pro")
    now = timezone.now()
    old_start, old_end = now - timedelta(days=31), now - timedelta(days=1)
    sub.current_period_start, sub.current_period_end = old_start, old_end
    sub.save()
    billing_period_record(sub=sub)
    sub.current_period_start, sub.current_period_end = old_end, old_end + timedelta(days=30)
    sub.save()
    billing_period_record(sub=sub)
    return old_start, old_end


def test_a_void_in_an_invoiced_period_is_refused_and_says_to_credit_in_stripe(tenant):
    old_start, old_end = _periods(tenant)
    first = call(tenant, 1_000, at=old_start + timedelta(days=3))
    second = call(tenant, 2_000, at=old_start + timedelta(days=4))
    # Ended, its invoice not finalised yet: still open (its late pushes still run).
    assert usage_record_void(event_id=first, reason="duplicate").inputs == -1_000

    # The invoice that opened the period (its first) ends at its start: not this one's.
    Invoice.objects.create(
        id="in_first", tenant=tenant, status="paid", currency="usd", total=0,
        period_start=old_start, period_end=old_start, created_at=old_start,
    )  # fmt: skip
    assert usage_record_void(event_id=call(tenant, 5, at=old_start + timedelta(days=5)),
                             reason="still open").inputs == -5  # fmt: skip
    # A final invoice is dated at Stripe's moment of the cancel, before this side recorded
    # the period's end (after the call returned, or its webhook came): it closes it all the
    # same (in whole seconds, seconds early, the period read as open).
    Invoice.objects.create(
        id="in_final", tenant=tenant, status="open", currency="usd", total=0,
        period_start=old_start.replace(microsecond=0),
        period_end=(old_end - timedelta(seconds=3)).replace(microsecond=0), created_at=old_end,
    )  # fmt: skip
    with pytest.raises(VoidRefused) as refusal:
        usage_record_void(event_id=second, reason="duplicate")
    assert "closed" in str(refusal.value) and "credit the customer in Stripe" in str(refusal.value)
    assert f"{old_start:%Y-%m-%d %H:%M:%S} to {old_end:%Y-%m-%d %H:%M:%S}" in str(refusal.value)
    assert not UsageRecord.objects.for_tenant(tenant).filter(corrects=second).exists()


def test_a_void_in_a_period_that_ended_over_a_week_ago_is_refused(tenant):
    """No invoice mirrored (a webhook lost), but its pushes stopped after 7 days: a void
    there would never reach Stripe."""
    long_ago = datetime.now(UTC) - timedelta(days=70)
    BillingPeriod.objects.create(
        tenant=tenant, start=long_ago, end=long_ago + timedelta(days=30), plan_id="free@1"
    )
    old = call(tenant, 10, at=long_ago + timedelta(days=1))
    with pytest.raises(VoidRefused, match="closed") as refusal:
        usage_record_void(event_id=old, reason="late")
    # A free tenant was never charged: no credit note to write in Stripe.
    assert "nothing in Stripe: none of it was charged" in str(refusal.value)
    assert "credit the customer" not in str(refusal.value)


def test_the_consumer_and_ordinary_writers_never_write_a_negative_row(tenant):
    outcome = usage_record_bulk(
        events=[{
            "v": 1, "event_id": "req_negative", "kind": "inference", "tenant_id": tenant.pk,
            "api_key_id": "key_a", "livemode": True, "model": "minilm-l6", "inputs": -5,
            "tokens": 10, "compute_ms": 1.0, "cached": 0,
            "occurred_at": timezone.now().isoformat(), "corrects": "req_other",
        }]
    )  # fmt: skip
    assert outcome.inserted == 0 and "non-negative" in outcome.rejected[0][1]
    row = {"kind": "inference", "tenant": tenant, "api_key_id": "key_a", "model": "minilm-l6",
           "compute_ms": 1.0, "occurred_at": timezone.now()}  # fmt: skip
    with pytest.raises(IntegrityError), transaction.atomic():  # the database's own guard
        UsageRecord.objects.create(event_id="req_neg2", inputs=-1, tokens=0, **row)
    with pytest.raises(IntegrityError), transaction.atomic():  # a correction never adds
        UsageRecord.objects.create(event_id="void_x", inputs=5, tokens=0, corrects="x", **row)
    assert not UsageRecord.objects.for_tenant(tenant).exists()


def test_the_command_prints_the_correcting_row_and_fails_clearly_on_refusal(tenant):
    wrong = call(tenant, 7)
    out = StringIO()
    call_command("ledger_void", wrong, "--reason", "duplicate", "--by", "alice", stdout=out,
                 stderr=StringIO())  # fmt: skip
    correction = UsageRecord.objects.for_tenant(tenant).get(corrects=wrong)
    assert out.getvalue().strip() == str(correction.pk)
    assert correction.corrected_by == "alice"
    with pytest.raises(CommandError, match="voided already"):
        call_command("ledger_void", wrong, "--reason", "again", stdout=StringIO())
    with pytest.raises(CommandError, match="No usage record"):
        call_command("ledger_void", "req_unknown", "--reason", "x", stdout=StringIO())
    # Who voids it is kept whole or refused (it was cut to 150 characters, unsaid).
    other = call(tenant, 2)
    with pytest.raises(CommandError, match="at most 150 characters, got 151"):
        call_command("ledger_void", other, "--reason", "x", "--by", "b" * 151, stdout=StringIO())
    assert not UsageRecord.objects.for_tenant(tenant).filter(corrects=other).exists()
    # Unsaid, who voided it is this OS user, through the command; a tenant with nothing in
    # Stripe is not told that Stripe gets the difference.
    import getpass

    said = StringIO()
    call_command("ledger_void", call(tenant, 3), "--reason", "x", stdout=StringIO(), stderr=said)
    latest = UsageRecord.objects.for_tenant(tenant).exclude(corrects="").latest("pk")
    assert latest.corrected_by == f"{getpass.getuser()} (manage.py)"
    assert "taken off its period." in said.getvalue() and "Stripe" not in said.getvalue()


def test_the_admin_action_asks_for_a_reason_then_voids(tenant):
    other = TenantFactory()
    wrong, right = call(tenant, 30), call(other, 40)
    pks = [UsageRecord.objects.unscoped().get(event_id=e).pk for e in (wrong, right)]
    url = "/admin/metering/usagerecord/"
    action = {"action": "void_selected", "_selected_action": pks}
    operator = staff_client(superuser=True)

    page = operator.post(url, action)
    assert page.status_code == 200 and 'name="reason"' in page.content.decode()
    assert wrong in page.content.decode() and right in page.content.decode()
    assert not UsageRecord.objects.unscoped().exclude(corrects="").exists()  # asked first
    blank = operator.post(url, {**action, "confirm": "yes", "reason": ""})
    assert 'name="reason"' in blank.content.decode()  # asked again, nothing voided
    assert not UsageRecord.objects.unscoped().exclude(corrects="").exists()

    done = operator.post(url, {**action, "confirm": "yes", "reason": "load test"}, follow=True)
    assert done.status_code == 200
    assert f"Voided {wrong}: correcting row" in done.content.decode()
    voids = UsageRecord.objects.unscoped().exclude(corrects="")
    assert sorted(voids.values_list("corrects", "corrected_by", "reason")) == sorted(
        [(wrong, "staff-0", "load test"), (right, "staff-0", "load test")]
    )
    from django.contrib.admin.models import ADDITION, LogEntry

    history = LogEntry.objects.filter(action_flag=ADDITION, user__username="staff-0")
    assert sorted(history.values_list("change_message", flat=True)) == sorted(
        [f"Voids {wrong}: load test", f"Voids {right}: load test"]
    )  # the admin's history says who appended each correcting row, and why
    again = operator.post(url, {**action, "confirm": "yes", "reason": "twice"}, follow=True)
    assert "voided already" in again.content.decode() and voids.count() == 2

    # A staff member who may only look at the ledger is not offered the action.
    viewer = staff_client("metering.view_usagerecord")
    assert 'value="void_selected"' not in viewer.get(url).content.decode()
    viewer.post(url, {**action, "confirm": "yes", "reason": "x"})
    assert voids.count() == 2
