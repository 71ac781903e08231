"""Handing fine-tuning jobs to the training queue, fairly between tenants.

One training queue serves every tenant, first in first out. A tenant has at most
``FINETUNE_DISPATCHED_PER_TENANT`` jobs of each mode (live, test) on it (sent and not yet
ended: queued on the broker or running); its other jobs read ``queued`` too but wait here,
in the database, and are sent oldest first as its jobs of their mode end. So one tenant's
fifty jobs put one job at a time ahead of another tenant's, not fifty.

A job is sent when it is created with a slot free; when one of its tenant's jobs ends
(``fine_tunes_dispatch_on_commit``, after the commit that ended it, wherever that is:
the worker's end, a cancel, a failed send, the lease giving up); and by
``fine_tunes_dispatch_sweep``, the safety net (a process that died between the commit and
the dispatch), run by the job-events consumer's sweep and the platform worker's beat.

``dispatched_at`` marks a job as sent. It is set by a conditional update (``dispatched_at``
still NULL, the job still ``queued``), under the tenant's row lock: two processes ending
jobs of one tenant at once count its free slots one after the other, a job is never sent
twice, and a job cancelled while it waited is never sent.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import redis
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from config.celery import app
from core.errors import Overloaded
from tenants.models import Tenant
from workers.contract import CONTRACT_VERSION, Queue, TaskName, TrainRequest, attempt_key

from . import messages
from .budget import job_token_limit
from .models import FineTuneEvent, FineTuneJob
from .registration import model_id_for

logger = logging.getLogger(__name__)

# Redis keys outlive any job by far; they expire so that they do not accumulate.
KEY_TTL_S = 7 * 24 * 3600
Status = FineTuneJob.Status
# Sent and not yet ended: what holds one of its tenant's slots.
IN_FLIGHT = (Status.QUEUED, Status.RUNNING)


@functools.cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)


def job_log(
    job: FineTuneJob,
    message: str,
    *,
    level: str = "info",
    kind: str = "log",
    at: datetime | None = None,
    **data: Any,
) -> None:
    FineTuneEvent.objects.create(
        tenant_id=job.tenant_id,
        job=job,
        type=kind,
        level=level,
        message=message[:1000],
        data=data,
        created_at=at or timezone.now(),
    )


def job_ended(job: FineTuneJob, message: str, *, level: str = "error") -> None:
    """The event of an end the platform gave the job itself (a cancel, a failure it found),
    typed as the job's new status: a client reading the events until ``succeeded``,
    ``failed`` or ``cancelled`` sees this job end (a cancelled job that was still waiting
    ended in a ``log`` and was never seen to end)."""
    job_log(job, message, level=level, kind=job.status)


def _train_request(job: FineTuneJob) -> TrainRequest:
    return {
        "v": CONTRACT_VERSION,
        "job_id": job.id,
        "attempt": job.attempt,
        "tenant_id": job.tenant_id,
        "api_key_id": job.api_key_id,
        "livemode": job.livemode,
        "base_model": job.base_model,
        "method": "lora" if job.method == FineTuneJob.Method.LORA else "head",
        "model_id": model_id_for(job),
        "training_file": job.training_file,
        "validation_file": job.validation_file or None,
        "hyperparameters": job.hyperparameters,
        "seed": job.seed,
        "max_trained_tokens": job_token_limit(livemode=job.livemode),
        "time_limit_s": settings.FINETUNE_TIME_LIMIT_S,
    }


def check_queue() -> None:
    """503 while the training queue (Redis) cannot be reached: nothing is created then. A
    queue lost between this look and the send leaves the job waiting (``queued``) for the
    sweep to send it once the queue is back (``job_enqueue_on_commit``)."""
    try:
        _redis().ping()
    except redis.RedisError:
        raise Overloaded(messages.QUEUE_UNAVAILABLE, code="broker_unavailable") from None


def job_enqueue_on_commit(job: FineTuneJob, *, dispatched_at: datetime | None = None) -> None:
    """Send the attempt after the commit (a worker must never see a job the database does
    not have yet). If the broker is down then: a job just dispatched (``dispatched_at``, the
    mark this dispatch set) goes back to waiting, and the sweep sends it later; a retry of a
    job that ran (the lease's) fails visibly instead of sitting in ``queued`` with no
    message behind it."""
    request = _train_request(job)

    def send() -> None:
        try:
            _redis().set(attempt_key(job.id), job.attempt, ex=KEY_TTL_S)
            app.send_task(TaskName.TRAIN.value, args=[request], queue=Queue.TRAINING.value)
        except Exception:
            logger.exception("could not enqueue fine-tuning job %s", job.id)
            if dispatched_at is None:
                job_fail(job.id, code="queue_unavailable", message=messages.QUEUE_LOST)
                return
            # NOTE: a send that raised after the broker took the message would be sent
            # again by the sweep: the worker then trains the same attempt twice, and the
            # second end finds the job ended (ignored, billed once). Failing the job instead
            # failed every job its tenant had waiting, one after the other.
            FineTuneJob.objects.for_tenant(job.tenant_id).filter(
                pk=job.id, status=Status.QUEUED, dispatched_at=dispatched_at
            ).update(dispatched_at=None)

    transaction.on_commit(send)


@transaction.atomic
def job_fail(job_id: str, *, code: str, message: str) -> None:
    job = FineTuneJob.objects.unscoped().select_for_update().filter(pk=job_id).first()
    if job is None or job.is_terminal:
        return
    job.status, job.finished_at = Status.FAILED, timezone.now()
    job.error = {"code": code, "message": message}
    job.save(update_fields=["status", "finished_at", "error"])
    job_ended(job, message)
    fine_tunes_dispatch_on_commit(tenant_id=job.tenant_id)


def _free_slots(tenant_id: str) -> dict[bool, int]:
    """How many more of the tenant's jobs may be sent now, by mode (livemode): live and test
    jobs have their slots apart, so a tenant's free test-mode jobs never hold its billed
    live ones back. WARNING: true only while the tenant's row is locked
    (``fine_tunes_dispatch``)."""
    in_flight = Counter(
        FineTuneJob.objects.for_tenant(tenant_id)
        .filter(status__in=IN_FLIGHT, dispatched_at__isnull=False)
        .values_list("livemode", flat=True)
    )
    return {
        mode: settings.FINETUNE_DISPATCHED_PER_TENANT - in_flight[mode] for mode in (True, False)
    }


@transaction.atomic
def fine_tunes_dispatch(*, tenant_id: str, created: str | None = None) -> list[str]:
    """Send the tenant's oldest waiting jobs while it has slots free. Returns their ids (each
    sent after the commit). Each job that waited says so in its events (``created``: the job
    being created, which did not wait)."""
    # WARNING: the count of the tenant's jobs in flight and the claims it allows must be one
    # critical section, or two processes ending jobs at once both see a free slot and send
    # two jobs for it. The tenant's row is the lock, as for fine_tune_create (which calls
    # this with it held) and taken first, as everywhere, so that nothing waits in a circle.
    # SQLite ignores FOR UPDATE; its IMMEDIATE transactions serialise writers the same way.
    Tenant.objects.select_for_update(no_key=True).filter(pk=tenant_id).values_list("pk").first()
    free = _free_slots(tenant_id)
    sent: list[str] = []
    passed: list[str] = []
    while any(n > 0 for n in free.values()):
        waiting = FineTuneJob.objects.for_tenant(tenant_id).filter(
            status=Status.QUEUED, dispatched_at__isnull=True
        )
        oldest = (
            waiting.exclude(pk__in=passed)
            .filter(livemode__in=[mode for mode, n in free.items() if n > 0])
            .order_by("created_at", "pk")
            .values_list("pk", "livemode")
            .first()
        )
        if oldest is None:
            break
        job_id, livemode = oldest
        now = timezone.now()
        # NOTE: conditional: a cancel of this job that committed since the look above (it
        # locks the job row, not the tenant's) leaves it unclaimed, never sent.
        if not waiting.filter(pk=job_id).update(dispatched_at=now):
            passed.append(job_id)
            continue
        job = FineTuneJob.objects.for_tenant(tenant_id).get(pk=job_id)
        if job_id != created:
            job_log(job, messages.EV_DISPATCHED)
        job_enqueue_on_commit(job, dispatched_at=now)
        sent.append(job_id)
        free[livemode] -= 1
    return sent


def fine_tunes_dispatch_on_commit(*, tenant_id: str) -> None:
    """Once the transaction that ended one of the tenant's jobs commits, send its next ones,
    in a transaction of their own (the job's lock is released by then: the tenant's row is
    always locked first). A failure here is logged and left to the sweep."""

    def dispatch() -> None:
        try:
            fine_tunes_dispatch(tenant_id=tenant_id)
        except Exception:
            logger.exception("could not dispatch tenant %s's waiting fine-tunes", tenant_id)

    transaction.on_commit(dispatch)


def fine_tunes_dispatch_sweep(*, now: datetime | None = None, lost_messages: bool = True) -> int:
    """The safety net: send every tenant's waiting jobs that its free slots allow. Nothing
    while the training queue cannot be reached (they would only go back to waiting).
    Returns the jobs sent."""
    try:
        _redis().ping()
        _lost_sends_reset()
        if lost_messages:  # (judged by whoever hears the jobs' starts: the consumer)
            _lost_messages_retry(now=now)
    except redis.RedisError:
        logger.warning("fine-tune dispatch sweep: the training queue cannot be reached")
        return 0
    # An operator's job across every tenant: deliberately unscoped.
    tenants = (
        FineTuneJob.objects.unscoped()
        .filter(status=Status.QUEUED, dispatched_at__isnull=True)
        .values_list("tenant_id", flat=True)
        .distinct()
    )
    return sum(len(fine_tunes_dispatch(tenant_id=tenant_id)) for tenant_id in list(tenants))


# A send runs right after its dispatch commits: one not begun this long after is lost.
SEND_GRACE_S = 60
_lost_checked_at = 0.0  # (unix seconds) when lost messages were last looked for


def _lost_sends_reset() -> int:
    """Jobs marked sent whose send never began (their process died between the commit and
    the send: no attempt key of theirs in Redis, which the send writes first) go back to
    waiting, to be sent again: else the job sat ``queued`` with no message behind it, and
    held its tenant's slot, every later job of the tenant behind it, for good. A Redis that
    lost its data lost their messages too: they are sent again. Returns how many."""
    cutoff = timezone.now() - timedelta(seconds=SEND_GRACE_S)
    marked = list(
        FineTuneJob.objects.unscoped()  # an operator's job across every tenant
        .filter(status=Status.QUEUED, dispatched_at__lt=cutoff)
        .values_list("pk", "tenant_id", "attempt", "dispatched_at")
    )
    if not marked:
        return 0
    sent = _redis().mget([attempt_key(job_id) for job_id, _, _, _ in marked])
    lost = 0
    for (job_id, tenant_id, attempt, dispatched_at), value in zip(marked, sent, strict=True):
        if value is not None and int(value) == attempt:
            continue
        # Conditional: a dispatch or an end that committed since is left as it is.
        lost += (
            FineTuneJob.objects.for_tenant(tenant_id)
            .filter(pk=job_id, status=Status.QUEUED, dispatched_at=dispatched_at)
            .update(dispatched_at=None)
        )
        logger.warning("fine-tuning job %s was marked sent but never sent: sent again", job_id)
    return lost


def job_retry_or_fail(job: FineTuneJob, *, seconds: float, why: str) -> None:
    """A job whose attempt was lost (its worker silent, or its message gone with no worker
    having started it): retried from the start, keeping its slot, up to
    ``FINETUNE_MAX_ATTEMPTS``; then failed (``worker_lost``), its slot freed. Call it with the
    job's row locked."""
    if job.attempt < settings.FINETUNE_MAX_ATTEMPTS:
        job.attempt += 1
        job.status, job.heartbeat_at, job.attempt_usage = Status.QUEUED, None, None
        job.save(update_fields=["attempt", "status", "heartbeat_at", "attempt_usage"])
        job_log(job, why.format(seconds=seconds, attempt=job.attempt,
                                max=settings.FINETUNE_MAX_ATTEMPTS), level="warning")  # fmt: skip
        job_enqueue_on_commit(job)  # it keeps its slot: dispatched_at stays
        return
    message = messages.WORKER_LOST.format(attempts=job.attempt, seconds=seconds)
    job.status, job.finished_at = Status.FAILED, timezone.now()
    job.error = {"code": "worker_lost", "message": message}
    job.attempt_usage = None
    job.save(update_fields=["status", "finished_at", "error", "attempt_usage"])
    job_ended(job, message)
    fine_tunes_dispatch_on_commit(tenant_id=job.tenant_id)


def _lost_messages_retry(*, now: datetime | None = None) -> int:
    """Jobs sent whose message is no longer on the training queue and that no worker started
    (a worker killed between taking the message and starting: messages are acknowledged on
    receipt; a Redis that lost the queue): the lease covers only running jobs, so such a job
    sat ``queued`` for good, and held its tenant's slot. A job found so is marked; found so
    again ``FINETUNE_HEARTBEAT_TIMEOUT_S`` later (its ``started`` event had time to land), it
    is retried, then failed, as a job whose worker went silent is. Returns jobs handled."""
    global _lost_checked_at
    now = now or timezone.now()
    timeout = float(settings.FINETUNE_HEARTBEAT_TIMEOUT_S)
    # At most every quarter of the timeout (the sweep runs every few seconds, and this reads
    # the whole training queue), whatever the clock did.
    if 0 <= now.timestamp() - _lost_checked_at < timeout / 4:
        return 0
    _lost_checked_at = now.timestamp()
    sent = list(
        FineTuneJob.objects.unscoped()  # an operator's job across every tenant
        .filter(status=Status.QUEUED, dispatched_at__lt=now - timedelta(seconds=SEND_GRACE_S))
        .values_list("pk", "attempt")
    )
    if not sent:
        return 0
    client = _redis()
    on_queue = _queued_attempts(client)
    marks = {(job_id, attempt): f"ft:missing:{job_id}:{attempt}" for job_id, attempt in sent}
    pipe = client.pipeline(transaction=False)
    for key, mark in marks.items():
        if key in on_queue:
            pipe.delete(mark)
        else:
            pipe.set(mark, now.timestamp(), nx=True, ex=KEY_TTL_S)
            pipe.get(mark)
    replies = iter(pipe.execute())
    lost = []
    for key in marks:
        next(replies)
        # (A mark gone between its SET and GET: another process's sweep saw it on the queue.)
        if (
            key not in on_queue
            and now.timestamp() - float(next(replies) or now.timestamp()) >= timeout
        ):
            lost.append(key)
    for job_id, attempt in lost:
        with transaction.atomic():
            found = FineTuneJob.objects.unscoped().select_for_update().filter(pk=job_id).first()
            if found is None or found.status != Status.QUEUED or found.attempt != attempt:
                continue
            job_retry_or_fail(found, seconds=timeout, why=messages.EV_MESSAGE_LOST)
    return len(lost)


def _queued_attempts(client: redis.Redis) -> set[tuple[str, int]]:
    """(job id, attempt) of every train request on the training queue (kombu's Redis lists,
    the priority ones included)."""
    name = Queue.TRAINING.value
    found: set[tuple[str, int]] = set()
    for key in (name, *(f"{name}\x06\x16{p}" for p in range(1, 10))):
        for raw in client.lrange(key, 0, -1):
            try:
                envelope = json.loads(raw)
                body = envelope["body"]
                if envelope.get("properties", {}).get("body_encoding") == "base64":
                    body = base64.b64decode(body)
                request = json.loads(body)[0][0]
                found.add((str(request["job_id"]), int(request["attempt"])))
            except (ValueError, KeyError, IndexError, TypeError):
                continue  # not a train request (nothing else is sent there)
    return found
