"""Applying workers' job events, and the lease sweep, against the real database: the state
machine, idempotency under redelivery, stale attempts, retry-once-then-fail, the model
registered on success (and its int8 variant when it holds accuracy), the fine-tune usage
event in the ledger."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from finetuning.models import FineTuneEvent, FineTuneJob
from finetuning.services import fine_tune_event_apply, fine_tune_sweep
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


def succeeded(job, attempt=1, seq=3):
    return event(
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


def test_a_job_runs_to_success_and_registers_its_model(job, tenant):
    assert job.status == Status.QUEUED
    assert fine_tune_event_apply(event=event(job, 1, "started"))
    assert reload(job).status == Status.RUNNING and reload(job).started_at is not None
    fine_tune_event_apply(event=event(job, 2, "progress", epoch=1, loss=0.5))
    assert fine_tune_event_apply(event=succeeded(job))
    done = reload(job)
    assert done.status == Status.SUCCEEDED and done.finished_at is not None
    assert done.fine_tuned_model == f"ft:minilm-l6:tickets:{job.id[6:14].lower()}"
    assert done.trained_tokens == 1234 and done.metrics["accuracy"] == 0.9
    model = AIModel.objects.for_tenant(tenant).get(pk=done.fine_tuned_model)
    assert model.kind == "fine_tuned" and model.artifact == "a" * 64
    assert model.labels == ["account", "billing"] and model.metrics["macro_f1"] == 0.88
    # The artifact hash is internal: it is not shown in the job's events.
    assert all("artifact" not in e.data for e in events_of(done))


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
    # A terminal job stays terminal, whatever arrives late.
    fine_tune_event_apply(event=succeeded(job))
    assert reload(job).status == Status.FAILED
    assert not AIModel.objects.for_tenant(tenant).exists()


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

    # Events of the first attempt (a zombie worker) are ignored from now on.
    assert not fine_tune_event_apply(event=succeeded(job, attempt=1, seq=9))
    fine_tune_event_apply(event=event(job, 1, "started", attempt=2))
    fine_tune_event_apply(event={**event(job, 0, "heartbeat", attempt=2)})
    assert reload(job).status == Status.RUNNING

    with django_capture_on_commit_callbacks() as sent:
        fine_tune_sweep(timeout_s=10, now=timezone.now() + timedelta(seconds=30))
    failed = reload(job)
    assert sent == [] and failed.status == Status.FAILED
    assert failed.error["code"] == "worker_lost" and "2 times" in failed.error["message"]


def test_fine_tune_usage_is_billed_once(job, tenant):
    usage = {
        "v": 1,
        "event_id": job.id,
        "kind": "fine_tune",
        "tenant_id": tenant.pk,
        "api_key_id": job.api_key_id,
        "livemode": True,
        "model": "ft:minilm-l6:tickets:x",
        "inputs": 48,
        "tokens": 5000,
        "compute_ms": 2500.0,
        "cached": 0,
        "occurred_at": timezone.now().isoformat(),
        "worker": "w",
    }
    assert usage_record_bulk(events=[usage]).inserted == 1
    assert usage_record_bulk(events=[usage]).duplicates == 1
    row = UsageRecord.objects.for_tenant(tenant).get()
    assert row.kind == "fine_tune" and row.event_id == job.id and row.tokens == 5000


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
    variant_id = f"ft:minilm-l6-int8:tickets:{job.id[6:14].lower()}"
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
