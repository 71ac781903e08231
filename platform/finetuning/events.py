"""Applying what training workers report: a job's events (a success registers its model
and bills the job in the same transaction), and the lease sweep that retries a job whose
worker died."""

from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from inference.models import AIModel
from metering.metrics import USAGE_EVENTS
from metering.models import UsageRecord
from metering.services import usage_record_bulk
from workers.contract import CONTRACT_VERSION

from . import messages
from .dispatch import (
    fine_tunes_dispatch_on_commit,
    job_ended,
    job_log,
    job_retry_or_fail,
)
from .models import FineTuneEvent, FineTuneJob
from .registration import fine_tuned_model_register, int8_variant_offer, model_id_for

logger = logging.getLogger(__name__)
Status = FineTuneJob.Status


def _when(raw: Any) -> datetime:
    moment = parse_datetime(str(raw)) if raw else None
    return moment if moment is not None and moment.tzinfo is not None else timezone.now()


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinity in it replaced by None: JSON has no such numbers
    (SQLite's JSON_VALID and PostgreSQL's jsonb refuse them), and a diverging job's loss is
    one. An event is stored with them left out rather than not stored."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


TERMINAL_KINDS = ("succeeded", "failed", "cancelled")


@transaction.atomic
def fine_tune_event_apply(*, event: dict[str, Any]) -> bool:
    """Apply one worker event. Idempotent (a redelivered event changes nothing) and safe
    against stale attempts (events of an attempt the sweep gave up on are ignored).
    Returns whether anything changed."""
    job_id, attempt, kind = str(event["job_id"]), int(event["attempt"]), str(event["type"])
    job = FineTuneJob.objects.unscoped().select_for_update().filter(pk=job_id).first()
    if job is None or attempt != job.attempt:
        return False
    now = timezone.now()
    if kind == "heartbeat":
        if job.status != Status.RUNNING:
            return False
        job.heartbeat_at = now
        fields = ["heartbeat_at"]
        data = event.get("data")
        usage = data.get("usage") if isinstance(data, dict) else None
        if isinstance(usage, dict):  # the attempt's compute so far (none from older workers)
            job.attempt_usage = _finite(usage)
            fields.append("attempt_usage")
        job.save(update_fields=fields)
        return True
    seq = int(event["seq"])
    if (
        FineTuneEvent.objects.for_tenant(job.tenant_id)
        .filter(job=job, attempt=attempt, seq=seq)
        .exists()
    ):
        return False
    data = event.get("data") or {}
    data = _finite(data) if isinstance(data, dict) else {}
    # The artifact hash and the usage (its cost to serve) are internal: not in the job's events.
    shown = {k: v for k, v in data.items() if k not in ("artifact", "usage")}
    sent = kind
    message = str(event.get("message", ""))
    level = str(event.get("level", "info"))
    if job.is_terminal and kind in TERMINAL_KINDS:
        # The worker's own end, after the platform ended the job and said so in an event of
        # that type (a cancel the worker confirms; a success that lost the race with a
        # cancel, a stop on a job a suspension failed): told as what it is, never as a
        # second end ("succeeded: model ... is ready" on a cancelled job).
        if kind != job.status:
            message = messages.WORKER_ENDED_LATE.format(
                status=job.status, kind=kind, message=message
            )
        kind, level = "log", "info"
    stored = FineTuneEvent.objects.create(
        tenant_id=job.tenant_id,
        job=job,
        attempt=attempt,
        seq=seq,
        type=kind[:16],
        level=level[:8],
        message=message[:1000],
        data=shown,
        created_at=_when(event.get("occurred_at")),
    )
    if job.is_terminal:
        # e.g. the worker confirming a cancel the user already made; or a success that lost
        # the race with a cancel: the job stays cancelled and nothing is billed, but what
        # its training used is a cost all the same.
        if sent in TERMINAL_KINDS and job.status != Status.SUCCEEDED:
            _compute_record(job, data.get("usage"))
        return True
    if kind == "started" and job.status == Status.QUEUED:
        job.status, job.started_at = Status.RUNNING, job.started_at or now
        job.heartbeat_at = now
    elif kind in ("progress", "log") and job.status == Status.RUNNING:
        job.heartbeat_at = now
    elif kind == "succeeded":
        _succeed(job, data, ended_at=stored.created_at)
    elif kind == "failed":
        job.status, job.finished_at = Status.FAILED, now
        job.error = {"code": str(data.get("code", "training_failed")), "message": event["message"]}
        _compute_record(job, data.get("usage"))
    elif kind == "cancelled":
        job.status, job.finished_at = Status.CANCELLED, now
        _compute_record(job, data.get("usage"))
    if job.is_terminal:
        job.attempt_usage = None  # the end said what the attempt used
    job.save()
    if job.is_terminal:
        fine_tunes_dispatch_on_commit(tenant_id=job.tenant_id)  # its slot is free
    return True


def fine_tune_event_refused(*, event: Any) -> bool:
    """A worker's terminal event (``succeeded``, ``failed``) that cannot be stored: its job
    fails now, with code ``internal`` and unbilled, rather than wait for the lease to call
    the silent worker lost and train it again, to the same end. True if a job was failed."""
    try:
        job_id, attempt, kind = str(event["job_id"]), int(event["attempt"]), str(event["type"])
    except (KeyError, TypeError, ValueError, OverflowError):
        return False
    if kind not in ("succeeded", "failed"):
        return False
    with transaction.atomic():
        job = FineTuneJob.objects.unscoped().select_for_update().filter(pk=job_id).first()
        if job is None or attempt != job.attempt or job.is_terminal:
            return False
        job.status, job.finished_at = Status.FAILED, timezone.now()
        job.error = {"code": "internal", "message": messages.REPORT_REFUSED}
        job.save(update_fields=["status", "finished_at", "error"])
        job_ended(job, messages.REPORT_REFUSED)
        fine_tunes_dispatch_on_commit(tenant_id=job.tenant_id)
    return True


def _succeed(job: FineTuneJob, result: dict[str, Any], *, ended_at: datetime) -> None:
    model = fine_tuned_model_register(job, result)
    job.status, job.finished_at = Status.SUCCEEDED, timezone.now()
    job.fine_tuned_model = model.id
    job.trained_tokens = int(result.get("trained_tokens", 0))
    job.metrics = model.metrics
    _meter(job, model, result.get("usage"))
    # NOTE: no event of our own: the worker's "succeeded" event, stored as it arrived, says
    # that the model is ready.
    offer = int8_variant_offer(job, model)
    if offer is not None:
        # Told just before the success (the events list is newest first): the job's end
        # stays its last event, for a client that reads the newest one to see it end.
        message, data = offer
        job_log(job, message, at=ended_at - timedelta(microseconds=1), **data)


def _meter(job: FineTuneJob, model: AIModel, usage: Any) -> None:
    """Bill the job, in the transaction that marks it succeeded: a job marked succeeded is
    always metered, and one that is not (cancelled first, failed, a stale attempt) never is.
    The ledger row goes in as the usage consumer writes it (rollups included)."""
    if usage is None:
        # NOTE: a worker from before the usage rode in the success published it to the
        # usage stream itself, before this event: nothing to record here. Should the usage
        # ever arrive both ways, the ledger's unique event id (the job id) keeps one row.
        return
    identity = _identity(job, UsageRecord.Kind.FINE_TUNE, model.id)
    outcome = usage_record_bulk(events=[{**usage, **identity}] if isinstance(usage, dict) else [])
    if not isinstance(usage, dict) or outcome.rejected:
        # NOTE: a worker's bug, not the customer's: the job trained and succeeds, billed on
        # its own figures (its trained tokens; no cost to serve known). Refusing the success
        # instead would leave the job to the lease sweep, to be trained again and failed.
        why = outcome.rejected[0][1] if outcome.rejected else "not an object"
        logger.error(
            "job %s: its success's usage is unusable (%s); billed on the job's", job.id, why
        )
        outcome = usage_record_bulk(
            events=[
                {
                    "v": CONTRACT_VERSION,
                    **identity,
                    "inputs": 0,
                    "tokens": job.trained_tokens,
                    "compute_ms": 0.0,
                    "cached": 0,
                    "occurred_at": timezone.now().isoformat(),
                    "worker": "",
                }
            ]
        )

    def count() -> None:
        USAGE_EVENTS.labels("recorded").inc(outcome.inserted)
        USAGE_EVENTS.labels("duplicate").inc(outcome.duplicates)

    transaction.on_commit(count)


def _identity(job: FineTuneJob, kind: UsageRecord.Kind, model_id: str) -> dict[str, Any]:
    """A job's usage row as the job says it is: the worker reports what the job used and
    cost; whose it is and what it is billed as are the job's, not the message's."""
    return {
        "event_id": job.id,
        "kind": kind.value,
        "tenant_id": job.tenant_id,
        "api_key_id": job.api_key_id,
        "livemode": job.livemode,
        "model": model_id,
        # Priced on the plan that admitted it: moving to free while it ran made it free.
        **({"plan_id": job.plan_id} if job.plan_id else {}),
    }


def _compute_record(job: FineTuneJob, usage: Any, *, lost: bool = False) -> None:
    """The compute of a job that did not succeed (it failed, or was cancelled), as the
    worker reports it with its end: a ledger row of kind ``compute``, a cost to serve on the
    margins pages, never billed nor in the tenant's usage. Once a job (its id is the row's:
    a redelivered end is a duplicate); none where the worker reports none (it had not
    started, or predates this). ``lost``: an attempt the lease gave up on, as far as its last
    heartbeat said, once an attempt (``<job id>:<attempt>``: the job may yet end, and
    record its own)."""
    if not isinstance(usage, dict):
        return
    unbilled = {"inputs": 0, "tokens": 0, "cached": 0}
    identity = _identity(job, UsageRecord.Kind.COMPUTE, model_id_for(job))
    if lost:
        identity["event_id"] = f"{job.id}:{job.attempt}"
    outcome = usage_record_bulk(events=[{**usage, **identity, **unbilled}])
    if outcome.rejected:
        logger.error("job %s: its compute is unusable (%s): not recorded", job.id,
                     outcome.rejected[0][1])  # fmt: skip


def fine_tune_sweep(*, timeout_s: float | None = None, now: datetime | None = None) -> int:
    """The lease: a running job with no heartbeat for ``timeout_s`` has lost its worker. It is
    retried from the start once, then failed with the reason. Returns jobs handled."""
    timeout = float(timeout_s if timeout_s is not None else settings.FINETUNE_HEARTBEAT_TIMEOUT_S)
    cutoff = (now or timezone.now()) - timedelta(seconds=timeout)
    # An operator's job across every tenant: deliberately unscoped.
    stale = list(
        FineTuneJob.objects.unscoped()
        .filter(status=Status.RUNNING, heartbeat_at__lt=cutoff)
        .values_list("pk", flat=True)
    )
    for job_id in stale:
        with transaction.atomic():
            job = FineTuneJob.objects.unscoped().select_for_update().filter(pk=job_id).first()
            if (
                job is None
                or job.status != Status.RUNNING
                or (job.heartbeat_at or cutoff) >= cutoff
            ):
                continue
            # Its worker is gone (or cut off): what it had used by its last heartbeat is all
            # that will ever be known of the attempt's compute.
            _compute_record(job, job.attempt_usage, lost=True)
            job_retry_or_fail(job, seconds=timeout, why=messages.EV_RETRY)
    return len(stale)
