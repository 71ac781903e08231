"""Applying workers' job events, and the lease sweep, against the real database: the state
machine, idempotency under redelivery, stale attempts, retry-once-then-fail, the model
registered on success (and its int8 variant when it holds accuracy), the fine-tune usage
in the ledger: written with the success it rides in, so only a job marked succeeded is
billed (never one cancelled first)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from finetuning.events import fine_tune_event_apply, fine_tune_sweep
from finetuning.models import FineTuneEvent, FineTuneJob
from finetuning.services import fine_tune_cancel
from inference.models import AIModel
from metering.models import UsageRecord
from metering.services import usage_record_bulk

pytestmark = pytest.mark.django_db

Status = FineTuneJob.Status


def event(job, seq, type, attempt=1, message="", **data):
    return {
        "v": 1,
        "job_id": job.id,
        "attempt": attempt,
        "seq": seq,
        "type": type,
        "level": "info",
        "message": message or type,
        "data": data,
        "occurred_at": timezone.now().isoformat(),
        "worker": "test",
    }


def events_of(job):
    return FineTuneEvent.objects.for_tenant(job.tenant_id).filter(job=job)


def reload(job):
    return FineTuneJob.objects.unscoped().get(pk=job.pk)


def usage_of(job, **fields):
    """The usage a training worker puts in its success (workers/training/tasks.py)."""
    return {
        "v": 1,
        "event_id": job.id,
        "kind": "fine_tune",
        "tenant_id": job.tenant_id,
        "api_key_id": job.api_key_id,
        "livemode": job.livemode,
        "model": f"ft:minilm-l6:tickets:{job.id[6:18]}",
        "inputs": 48,
        "tokens": 1234,
        "compute_ms": 55.0,
        "cached": 0,
        "occurred_at": timezone.now().isoformat(),
        "worker": "w",
        "cost_micros": "1.5278",
        "pool": "cpu",
        **fields,
    }


def succeeded(job, attempt=1, seq=3, usage=True):
    """A success as a worker sends it; ``usage=False``: as a worker from before the usage
    rode in it (it published the usage to the usage stream itself)."""
    body = event(
        job,
        seq,
        "succeeded",
        attempt=attempt,
        artifact="a" * 64,
        labels=["account", "billing"],
        metrics={"accuracy": 0.9, "macro_f1": 0.88, "per_label_f1": {"account": 0.9}},
        trained_tokens=1234,
        compute_ms=55.0,
    )
    if usage:
        body["data"]["usage"] = usage_of(job) if usage is True else usage
    return body


def ledger(job):
    return UsageRecord.objects.unscoped().filter(event_id=job.id)


def test_a_job_runs_to_success_and_registers_its_model(job, tenant):
    assert job.status == Status.QUEUED
    assert fine_tune_event_apply(event=event(job, 1, "started"))
    assert reload(job).status == Status.RUNNING and reload(job).started_at is not None
    fine_tune_event_apply(event=event(job, 2, "progress", epoch=1, loss=0.5))
    assert fine_tune_event_apply(event=succeeded(job))
    done = reload(job)
    assert done.status == Status.SUCCEEDED and done.finished_at is not None
    assert done.fine_tuned_model == f"ft:minilm-l6:tickets:{job.id[6:18]}"
    assert done.trained_tokens == 1234 and done.metrics["accuracy"] == 0.9
    model = AIModel.objects.for_tenant(tenant).get(pk=done.fine_tuned_model)
    assert model.kind == "fine_tuned" and model.artifact == "a" * 64
    assert model.labels == ["account", "billing"] and model.metrics["macro_f1"] == 0.88
    # The artifact hash and the usage (cost to serve) are internal: not in the job's events.
    assert all("artifact" not in e.data and "usage" not in e.data for e in events_of(done))


def test_redelivered_events_change_nothing(job):
    for _ in range(2):
        fine_tune_event_apply(event=event(job, 1, "started"))
        fine_tune_event_apply(event=event(job, 2, "progress", epoch=1))
    assert events_of(job).filter(seq__isnull=False).count() == 2
    assert fine_tune_event_apply(event=succeeded(job))
    assert not fine_tune_event_apply(event=succeeded(job))


def test_failed_and_cancelled_events(job, make_dataset, tenant):
    fine_tune_event_apply(event=event(job, 1, "started"))
    fine_tune_event_apply(event=event(job, 2, "failed", message="bad data", code="invalid_data"))
    failed = reload(job)
    assert failed.status == Status.FAILED
    assert failed.error == {"code": "invalid_data", "message": "bad data"}
    # A terminal job stays terminal, whatever arrives late, and a failed job is not billed:
    # what the late success used is a cost, never billed (test_unbilled_compute).
    fine_tune_event_apply(event=succeeded(job))
    assert reload(job).status == Status.FAILED
    assert not AIModel.objects.for_tenant(tenant).exists()
    assert [row.kind for row in ledger(job)] == ["compute"]


def test_heartbeats_extend_the_lease_and_a_silent_job_is_retried_once_then_failed(
    job, django_capture_on_commit_callbacks
):
    fine_tune_event_apply(event=event(job, 1, "started"))
    later = timezone.now() + timedelta(seconds=30)
    assert fine_tune_sweep(timeout_s=60, now=later) == 0
    with django_capture_on_commit_callbacks() as sent:
        assert fine_tune_sweep(timeout_s=10, now=later) == 1
    assert len(sent) == 1  # the second attempt is sent to the training queue
    retried = reload(job)
    assert retried.status == Status.QUEUED and retried.attempt == 2
    assert (
        "retrying from the start (attempt 2 of 2)"
        in events_of(retried).latest("created_at").message
    )

    # Events of the first attempt (a zombie worker) are ignored from now on, and its
    # success bills nothing.
    assert not fine_tune_event_apply(event=succeeded(job, attempt=1, seq=9))
    assert not ledger(job).exists()
    fine_tune_event_apply(event=event(job, 1, "started", attempt=2))
    fine_tune_event_apply(event={**event(job, 0, "heartbeat", attempt=2)})
    assert reload(job).status == Status.RUNNING

    with django_capture_on_commit_callbacks(execute=True) as sent:
        fine_tune_sweep(timeout_s=10, now=timezone.now() + timedelta(seconds=30))
    failed = reload(job)
    # Not sent again: its one callback dispatches its tenant's next waiting job (none here).
    assert len(sent) == 1 and failed.status == Status.FAILED
    assert failed.dispatched_at is not None
    assert failed.error["code"] == "worker_lost" and "2 times" in failed.error["message"]


def test_a_success_bills_the_job_once_in_the_transaction_that_marks_it_succeeded(job, tenant):
    fine_tune_event_apply(event=event(job, 1, "started"))
    assert fine_tune_event_apply(event=succeeded(job))
    done = reload(job)
    row = ledger(job).get()
    assert row.kind == "fine_tune" and row.tenant_id == tenant.pk
    assert row.model == done.fine_tuned_model and row.livemode == job.livemode
    assert (row.tokens, row.inputs, row.compute_ms, row.worker) == (1234, 48, 55.0, "w")
    assert str(row.cost_micros) == "1.5278" and row.pool == "cpu"
    assert row.plan_id == "pro@1"  # the tenant's plan (conftest: pro)
    # A redelivered success writes nothing; neither does a late one from another seq.
    assert not fine_tune_event_apply(event=succeeded(job))
    fine_tune_event_apply(event=succeeded(job, seq=4))
    assert ledger(job).count() == 1


def test_a_job_cancelled_before_its_success_is_applied_is_not_billed(job, tenant):
    """The worker finished, but the platform had not applied its success when the user
    cancelled (the cancel is accepted: the job still read running): the job stays
    cancelled, registers no model and bills nothing (what it used is a cost all the same:
    a row of kind compute, no inputs, no tokens)."""
    fine_tune_event_apply(event=event(job, 1, "started"))
    fine_tune_cancel(tenant=tenant, job_id=job.id, livemode=job.livemode)
    assert fine_tune_event_apply(event=succeeded(job))  # stored as an event, nothing else
    cancelled = reload(job)
    assert cancelled.status == Status.CANCELLED and not cancelled.fine_tuned_model
    assert not AIModel.objects.for_tenant(tenant).exists()
    unbilled = UsageRecord.objects.for_tenant(tenant).get()
    assert (unbilled.kind, unbilled.inputs, unbilled.tokens) == ("compute", 0, 0)
    assert unbilled.compute_ms == 55.0  # the success's
    # Its events tell the late success as what it is, not as a second end of the job.
    late = events_of(cancelled).filter(seq=3).get()
    assert (late.type, late.level) == ("log", "info")
    assert late.message.startswith("The job was already cancelled when its worker reported")
    assert not events_of(cancelled).filter(type="succeeded").exists()


def test_the_usage_is_billed_as_the_job_says_whatever_the_message_claims(job, tenant, other_tenant):
    forged = usage_of(job, tenant_id=other_tenant.pk, event_id="ftjob_other", kind="inference",
                      model="minilm-l6", livemode=not job.livemode)  # fmt: skip
    fine_tune_event_apply(event=succeeded(job, usage=forged))
    row = UsageRecord.objects.unscoped().get()
    assert (row.event_id, row.tenant_id, row.kind) == (job.id, tenant.pk, "fine_tune")
    assert row.model == reload(job).fine_tuned_model and row.livemode == job.livemode


@pytest.mark.parametrize("usage", ["x", {"tokens": 5}], ids=["not-an-object", "malformed"])
def test_an_unusable_usage_is_billed_on_the_jobs_own_figures(job, usage):
    """A worker's bug must not cost the customer the model, nor the operator a second
    training run (refused, the success would leave the job to the lease sweep): the job
    succeeds, billed on its trained tokens, with no cost to serve known."""
    fine_tune_event_apply(event=event(job, 1, "started"))
    assert fine_tune_event_apply(event=succeeded(job, usage=usage))
    assert reload(job).status == Status.SUCCEEDED
    row = ledger(job).get()
    assert (row.kind, row.tokens, row.compute_ms, row.cost_micros) == ("fine_tune", 1234, 0, 0)
    assert row.model == reload(job).fine_tuned_model


def test_a_worker_that_publishes_usage_itself_is_billed_once(job, tenant):
    """A training worker from before the usage rode in the success publishes it to the
    usage stream first; the platform then records none of its own."""
    published = usage_of(job, compute_ms=2500.0, tokens=5000)
    assert usage_record_bulk(events=[published]).inserted == 1  # the usage consumer
    fine_tune_event_apply(event=event(job, 1, "started"))
    assert fine_tune_event_apply(event=succeeded(job, usage=False))
    assert reload(job).status == Status.SUCCEEDED
    assert ledger(job).get().tokens == 5000
    # Should one ever arrive both ways, the ledger's unique event id keeps one row.
    assert usage_record_bulk(events=[published]).duplicates == 1
    assert ledger(job).count() == 1


def succeeded_with_int8(job, delta, seq=3):
    body = succeeded(job, seq=seq)
    body["data"]["metrics"].update(
        int8_accuracy=round(0.9 + delta / 100, 4),
        int8_macro_f1=0.87,
        int8_per_label_f1={"account": 0.89},
        int8_accuracy_delta=delta,
        validation_examples=40,
        train_examples=160,
    )
    return body


@pytest.mark.parametrize("delta", [0.0, -0.5, -1.0, 2.5])
def test_an_int8_variant_within_the_threshold_is_registered(job, tenant, delta):
    fine_tune_event_apply(event=event(job, 1, "started"))
    fine_tune_event_apply(event=succeeded_with_int8(job, delta))
    done = reload(job)
    parent = AIModel.objects.for_tenant(tenant).get(pk=done.fine_tuned_model)
    variant_id = f"ft:minilm-l6-int8:tickets:{job.id[6:18]}"
    assert done.fine_tuned_model.startswith("ft:minilm-l6:")  # the job's model stays fp32
    assert done.metrics["int8_accuracy_delta"] == delta
    variant = AIModel.objects.for_tenant(tenant).get(pk=variant_id)
    assert variant.parent_id == parent.pk and variant.base_model == "minilm-l6-int8"
    assert variant.artifact == parent.artifact and variant.labels == parent.labels
    assert variant.accuracy_delta == delta and variant.kind == "fine_tuned"
    assert variant.metrics["accuracy"] == round(0.9 + delta / 100, 4)
    assert variant.metrics["per_label_f1"] == {"account": 0.89}
    said = events_of(job).get(message__startswith="int8 variant")
    assert f"{variant_id} offered" in said.message and said.data["int8_model"] == variant_id


@pytest.mark.parametrize("delta", [0.0, -3.12])
def test_the_jobs_end_stays_its_newest_event_after_the_int8_verdict(job, tenant, delta, client_for):
    """The events list is newest first: a client that reads the newest event to see the job
    end saw the int8 verdict there instead (it was told after the success)."""
    fine_tune_event_apply(event=event(job, 1, "started"))
    fine_tune_event_apply(event=succeeded_with_int8(job, delta))
    body = client_for(tenant, ["training"]).get(f"/v1/fine-tunes/{job.id}/events").json()
    newest, verdict = body["data"][:2]
    assert newest["type"] == "succeeded"
    assert verdict["type"] == "log" and verdict["message"].startswith("int8 variant")
    assert verdict["created_at"] <= newest["created_at"]


@pytest.mark.parametrize("delta", [-1.01, -3.12])
def test_an_int8_variant_that_loses_more_is_not_offered_and_the_job_says_why(job, tenant, delta):
    fine_tune_event_apply(event=event(job, 1, "started"))
    fine_tune_event_apply(event=succeeded_with_int8(job, delta))
    done = reload(job)
    assert done.status == Status.SUCCEEDED and done.metrics["int8_accuracy_delta"] == delta
    assert list(AIModel.objects.for_tenant(tenant).values_list("pk", flat=True)) == [
        done.fine_tuned_model
    ]
    said = events_of(job).get(message__startswith="int8 variant")
    assert said.message == (
        f"int8 variant not offered: it loses {-delta:.2f} points of validation accuracy "
        "against fp32, and at most 1 may be lost."
    )
    assert said.data == {
        "int8_model": None,
        "int8_accuracy_delta": delta,
        "int8_max_loss_points": 1.0,
    }


def test_the_threshold_is_a_setting(job, tenant, settings):
    settings.FINETUNE_INT8_MAX_LOSS_POINTS = 5.0
    fine_tune_event_apply(event=event(job, 1, "started"))
    fine_tune_event_apply(event=succeeded_with_int8(job, -3.12))
    assert AIModel.objects.for_tenant(tenant).filter(parent__isnull=False).count() == 1


def test_no_measurement_no_variant(job, tenant):
    """A worker that did not measure (or a model on the int8 base): nothing to offer."""
    fine_tune_event_apply(event=event(job, 1, "started"))
    fine_tune_event_apply(event=succeeded(job))
    assert AIModel.objects.for_tenant(tenant).count() == 1
    assert not events_of(job).filter(message__startswith="int8 variant").exists()


def test_suspending_the_tenant_stops_its_unfinished_jobs_unbilled(
    job, tenant, make_dataset, django_capture_on_commit_callbacks
):
    """A suspended account's jobs read failed (tenant_suspended) at once; their workers are
    told to stop once the suspension commits, and a success one sends anyway bills nothing
    (what it used is a cost: kind compute)."""
    from apikeys.models import ApiKey
    from finetuning.services import _redis, fine_tune_create
    from tenants.models import Tenant
    from tenants.services import tenant_set_status
    from workers.contract import cancel_key

    fine_tune_event_apply(event=event(job, 1, "started"))
    queued = fine_tune_create(
        tenant=tenant, api_key=ApiKey.objects.for_tenant(tenant).get(), base_model="minilm-l6",
        training_dataset_id=make_dataset(tenant).id, validation_dataset_id=None,
        method="head", hyperparameters={}, suffix="second", seed=0,
    )  # fmt: skip
    _redis().delete(cancel_key(job.id), cancel_key(queued.id))
    with django_capture_on_commit_callbacks(execute=True):
        tenant_set_status(tenant=tenant, status=Tenant.Status.SUSPENDED)
        assert not _redis().exists(cancel_key(job.id))  # not before the commit
    for stopped, was in ((reload(job), "running"), (reload(queued), "queued")):
        assert stopped.status == Status.FAILED and stopped.finished_at is not None
        assert stopped.error["code"] == "tenant_suspended"
        assert f"suspended while this job was {was}" in stopped.error["message"]
        ended = events_of(stopped).latest("created_at")
        assert (ended.type, ended.level) == ("failed", "error")  # its end, as its status
        assert _redis().exists(cancel_key(stopped.id))
    # The running job's worker had finished: its success registers and bills nothing.
    assert fine_tune_event_apply(event=succeeded(job))
    assert reload(job).status == Status.FAILED and not reload(job).fine_tuned_model
    assert not AIModel.objects.for_tenant(tenant).exists()
    assert [row.kind for row in ledger(job)] == ["compute"]
    # Reactivating does not restart them; finished jobs are left as they are.
    tenant_set_status(tenant=tenant, status=Tenant.Status.ACTIVE)
    assert reload(queued).status == Status.FAILED


def test_suspending_leaves_finished_jobs_and_other_tenants_alone(job, tenant, other_tenant):
    from tenants.models import Tenant
    from tenants.services import tenant_set_status

    fine_tune_event_apply(event=succeeded(job))
    tenant_set_status(tenant=other_tenant, status=Tenant.Status.SUSPENDED)
    tenant_set_status(tenant=tenant, status=Tenant.Status.SUSPENDED)
    done = reload(job)
    assert done.status == Status.SUCCEEDED and done.error is None and ledger(job).count() == 1


@pytest.mark.parametrize("how", ["form", "action"])
def test_a_suspension_in_the_admin_stops_the_tenants_jobs(admin_client, job, tenant, how):
    from django.contrib.admin.utils import quote

    if how == "form":
        response = admin_client.post(
            f"/admin/tenants/tenant/{quote(tenant.pk)}/change/",
            {"name": tenant.name, "slug": tenant.slug, "status": "suspended"},
        )
    else:
        response = admin_client.post(
            "/admin/tenants/tenant/", {"action": "suspend", "_selected_action": [tenant.pk]}
        )
    assert response.status_code == 302
    stopped = reload(job)
    assert stopped.status == Status.FAILED and stopped.error["code"] == "tenant_suspended"


def test_a_fine_tune_created_after_a_suspension_it_waited_for_is_refused(tenant, make_dataset):
    """A request authenticated before the suspension committed, creating its job after: the
    status is read again under the tenant's lock, and the job is refused (403), never run."""
    from apikeys.models import ApiKey
    from core.errors import PermissionError_
    from finetuning.services import fine_tune_create
    from tenants.models import Tenant
    from tests.factories import make_key

    make_key(tenant, ["training"])
    dataset = make_dataset(tenant)
    key = ApiKey.objects.for_tenant(tenant).get()
    Tenant.objects.filter(pk=tenant.pk).update(status=Tenant.Status.SUSPENDED)
    with pytest.raises(PermissionError_) as refused:
        fine_tune_create(
            tenant=tenant, api_key=key, base_model="minilm-l6",
            training_dataset_id=dataset.id, validation_dataset_id=None, method="head",
            hyperparameters={}, suffix="late", seed=0,
        )  # fmt: skip
    assert refused.value.code == "tenant_suspended"
    assert not FineTuneJob.objects.for_tenant(tenant).exists()
