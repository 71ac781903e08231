"""A fine-tune that did not succeed (failed, or cancelled, by the user or by a success
that lost the race) used the training worker all the same: the worker reports what it
used with the job's end, and the platform records it as a cost to serve (a ledger row of
kind ``compute``) that the margins pages count under fine-tuning, and that is never
billed, never in the tenant's usage, never voided. It was recorded nowhere: a failed
job's compute was paid for and invisible."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.rating import rate_tenant_period
from economics.selectors import margins
from finetuning.events import fine_tune_event_apply, fine_tune_sweep
from finetuning.models import FineTuneJob
from finetuning.services import fine_tune_cancel
from metering.corrections import VoidRefused, usage_record_void
from metering.models import UsageRecord
from metering.sums import usage_sums
from plans.models import Plan
from tests.finetuning.test_events import event, events_of, reload, succeeded, usage_of

pytestmark = pytest.mark.django_db
Status = FineTuneJob.Status


def compute_of(job, **fields):
    """What a training worker puts in its ``failed`` or ``cancelled`` event (the attempt's
    compute so far: workers/training/tasks.py ``compute_event_for``)."""
    spent = {"compute_ms": 4_000.0, "cost_micros": "111.1111", **fields}
    return usage_of(job, kind="compute", inputs=0, tokens=0, **spent)


def _around():  # type: ignore[no-untyped-def]
    now = timezone.now()
    return now - timedelta(days=1), now + timedelta(days=1)


def test_a_failed_jobs_compute_is_a_cost_never_billed_nor_reported(job, tenant, client_for):
    fine_tune_event_apply(event=event(job, 1, "started"))
    failed = event(job, 2, "failed", message="diverged", code="training_diverged",
                   usage=compute_of(job, tenant_id="someone_else"))  # fmt: skip
    assert fine_tune_event_apply(event=failed)
    assert reload(job).status == Status.FAILED
    row = UsageRecord.objects.for_tenant(tenant).get()
    # Whose it is is the job's, not the message's; what it used is the worker's.
    assert (row.event_id, row.kind, row.tenant_id) == (job.id, "compute", tenant.pk)
    assert (row.inputs, row.tokens, row.compute_ms) == (0, 0, 4_000.0)
    assert row.cost_micros == Decimal("111.1111") and row.plan_id == "pro@1"
    # The job's events keep it to themselves.
    assert all("usage" not in e.data for e in events_of(job))
    # Not the tenant's usage, not billed.
    start, end = _around()
    assert usage_sums(tenant=tenant, livemode=True, start=start, end=end) == [
        {"requests": 0, "inputs": 0, "cached": 0, "tokens": 0, "compute_ms": 0.0}
    ]
    report = client_for(tenant, ["billing"]).get("/v1/usage").json()
    assert report["total"]["fine_tunes"] == 0 and report["total"]["amount"] == 0
    pro = Plan.objects.get(pk="pro@1")
    assert rate_tenant_period(tenant=tenant, plan=pro, start=start, end=end).usage_total == 0
    # A cost of fine-tuning on the margins page, with no revenue of its own.
    (line,) = [m for m in margins(start=start, end=end, by="tenant") if m["tenant"] == tenant.pk]
    assert line["finetune_cost_micros"] == line["cost_micros"] == Decimal("111.1111")
    assert line["finetunes"] == 0 and line["requests"] == 0
    # Nothing to void.
    with pytest.raises(VoidRefused, match="never billed"):
        usage_record_void(event_id=job.id, reason="refund")
    # A redelivered end records nothing more.
    assert not fine_tune_event_apply(event=failed)
    assert UsageRecord.objects.for_tenant(tenant).count() == 1


def test_a_cancelled_jobs_compute_is_recorded_once_from_the_workers_end(job, tenant):
    """The user cancels a running job; the worker stops at its next step and says what the
    attempt used: recorded, though the job was cancelled before that event came."""
    fine_tune_event_apply(event=event(job, 1, "started"))
    fine_tune_cancel(tenant=tenant, job_id=job.id, livemode=job.livemode)
    stopped = event(job, 2, "cancelled", usage=compute_of(job))
    assert fine_tune_event_apply(event=stopped)
    assert reload(job).status == Status.CANCELLED
    row = UsageRecord.objects.for_tenant(tenant).get()
    assert (row.kind, row.compute_ms, row.cost_micros) == ("compute", 4_000.0, Decimal("111.1111"))
    # A success that lost the race with the cancel, after it: its compute is the same
    # job's, recorded once.
    fine_tune_event_apply(event=succeeded(job, seq=3))
    assert UsageRecord.objects.for_tenant(tenant).count() == 1


def test_an_end_without_compute_records_nothing(job, tenant):
    """A worker stopped before it trained (cancelled at pick-up), or one from before ends
    carried their compute: no row."""
    fine_tune_event_apply(event=event(job, 1, "started"))
    fine_tune_event_apply(event=event(job, 2, "failed", message="bad", code="invalid_data"))
    assert not UsageRecord.objects.for_tenant(tenant).exists()


def test_a_lost_attempts_compute_is_recorded_as_its_last_heartbeat_said(job, tenant):
    """A training worker killed mid-job never reports its end: what its heartbeats said the
    attempt had used is recorded when the lease gives it up, once an attempt, beside what
    the next attempt reports with its own end (and a success is billed as ever)."""
    fine_tune_event_apply(event=event(job, 1, "started"))
    for ms in (2_000.0, 5_000.0):  # the compute so far, with each heartbeat
        beat = event(job, 0, "heartbeat", usage=compute_of(job, compute_ms=ms))
        assert fine_tune_event_apply(event=beat)
    assert reload(job).attempt_usage["compute_ms"] == 5_000.0
    later = timezone.now() + timedelta(seconds=30)
    assert fine_tune_sweep(timeout_s=10, now=later) == 1
    retried = reload(job)
    assert retried.attempt == 2 and retried.attempt_usage is None
    (lost,) = UsageRecord.objects.for_tenant(tenant)
    assert (lost.event_id, lost.kind, lost.compute_ms) == (f"{job.id}:1", "compute", 5_000.0)
    assert lost.tenant_id == tenant.pk and lost.cost_micros == Decimal("111.1111")
    # The second attempt succeeds: billed, the lost attempt's compute kept beside it.
    fine_tune_event_apply(event=event(job, 1, "started", attempt=2))
    assert fine_tune_event_apply(event=succeeded(job, attempt=2))
    rows = UsageRecord.objects.for_tenant(tenant).order_by("kind")
    assert [(r.event_id, r.kind) for r in rows] == [
        (f"{job.id}:1", "compute"), (job.id, "fine_tune")
    ]  # fmt: skip
    start, end = _around()
    (line,) = [m for m in margins(start=start, end=end, by="tenant") if m["tenant"] == tenant.pk]
    assert line["finetunes"] == 1
    assert line["finetune_cost_micros"] == Decimal("111.1111") + rows[1].cost_micros


def test_a_lost_attempt_without_heartbeat_usage_records_nothing(job, tenant):
    """Heartbeats from a worker that predates this carry no usage: nothing to record, and the
    job is retried as before; the second attempt lost for good fails the job, its last
    heartbeat's compute recorded under its own attempt."""
    fine_tune_event_apply(event=event(job, 1, "started"))
    fine_tune_event_apply(event=event(job, 0, "heartbeat"))
    fine_tune_sweep(timeout_s=10, now=timezone.now() + timedelta(seconds=30))
    assert reload(job).attempt == 2
    assert not UsageRecord.objects.for_tenant(tenant).exists()
    fine_tune_event_apply(event=event(job, 1, "started", attempt=2))
    beat = event(job, 0, "heartbeat", attempt=2, usage=compute_of(job, compute_ms=700.0))
    fine_tune_event_apply(event=beat)
    fine_tune_sweep(timeout_s=10, now=timezone.now() + timedelta(seconds=30))
    failed = reload(job)
    assert failed.status == Status.FAILED and failed.error["code"] == "worker_lost"
    (row,) = UsageRecord.objects.for_tenant(tenant)
    assert (row.event_id, row.compute_ms) == (f"{job.id}:2", 700.0)
