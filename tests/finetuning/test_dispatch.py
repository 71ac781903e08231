"""Per-tenant fairness on the training queue (finetuning/dispatch.py), against the real
database and the real Redis queue the training workers read: a tenant's jobs beyond
FINETUNE_DISPATCHED_PER_TENANT wait in the database and are sent oldest first as its jobs
end, a cancelled waiting job is never sent, and no job is sent twice, also when two
processes end jobs of one tenant at once."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
import redis
from django.db import connection
from django.utils import timezone

from apikeys.models import ApiKey
from finetuning import dispatch
from finetuning.events import fine_tune_event_apply, fine_tune_sweep
from finetuning.models import FineTuneEvent, FineTuneJob
from finetuning.services import fine_tune_cancel, fine_tune_create
from tests.factories import TenantFactory, make_key, subscribe
from workers.contract import Queue

pytestmark = pytest.mark.django_db
Status = FineTuneJob.Status


@pytest.fixture(autouse=True)
def empty_training_queue() -> None:
    queue().delete(Queue.TRAINING.value)


def queue() -> redis.Redis:
    return redis.Redis.from_url(os.environ["REDIS_URL"])


def sent_requests() -> list[dict[str, Any]]:
    """The requests on the training queue, in the order they were sent (kombu's Redis
    transport pushes on the left)."""
    requests = []
    for raw in reversed(queue().lrange(Queue.TRAINING.value, 0, -1)):
        envelope = json.loads(raw)
        body = envelope["body"]
        if envelope["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        requests.append(json.loads(body)[0][0])
    return requests


def sent() -> list[str]:
    return [request["job_id"] for request in sent_requests()]


def create(tenant: Any, dataset: Any, livemode: bool = True) -> FineTuneJob:
    mode = "live" if livemode else "test"
    key = ApiKey.objects.for_tenant(tenant).filter(mode=mode).first()
    if key is None:
        make_key(tenant, ["training"], mode)
        key = ApiKey.objects.for_tenant(tenant).get(mode=mode)
    return fine_tune_create(
        tenant=tenant, api_key=key, base_model="minilm-l6", training_dataset_id=dataset.id,
        validation_dataset_id=None, method="head", hyperparameters={}, suffix="", seed=0,
    )  # fmt: skip


def end(job: FineTuneJob, kind: str = "failed", seq: int = 2) -> None:
    """The worker's end of the job, as the job-events consumer applies it."""
    fine_tune_event_apply(
        event={
            "v": 1, "job_id": job.id, "attempt": job.attempt, "seq": seq, "type": kind,
            "level": "info", "message": kind, "data": {"code": "internal"},
            "occurred_at": timezone.now().isoformat(), "worker": "test",
        }
    )  # fmt: skip


def reload(job: FineTuneJob) -> FineTuneJob:
    return FineTuneJob.objects.unscoped().get(pk=job.pk)


def said(job: FineTuneJob, text: str) -> bool:
    return (
        FineTuneEvent.objects.for_tenant(job.tenant_id)
        .filter(job=job, message__contains=text)
        .exists()
    )


def test_a_tenants_jobs_past_its_slot_wait_and_other_tenants_go_between(
    tenant, other_tenant, make_dataset, django_capture_on_commit_callbacks
):
    subscribe(other_tenant, "pro")
    mine, theirs = make_dataset(tenant), make_dataset(other_tenant)
    with django_capture_on_commit_callbacks(execute=True):
        first, second, third = (create(tenant, mine) for _ in range(3))
        other = create(other_tenant, theirs)
    assert sent() == [first.id, other.id]
    for waiting in (second, third):
        waiting = reload(waiting)
        assert waiting.status == Status.QUEUED and waiting.dispatched_at is None
        assert said(waiting, "Waiting for one of this account's jobs to finish")
    assert reload(first).dispatched_at is not None and not said(first, "Waiting")

    # Its first job ends: its next one, the oldest waiting, is sent (after the other
    # tenant's, which went before it).
    with django_capture_on_commit_callbacks(execute=True):
        end(first)
    assert sent() == [first.id, other.id, second.id]
    assert said(reload(second), "Sent to the training queue")
    # A success ends a job as well.
    fine_tune_event_apply(event={**_started(second)})
    with django_capture_on_commit_callbacks(execute=True):
        end(second, "cancelled")
    assert sent() == [first.id, other.id, second.id, third.id]


def _started(job: FineTuneJob) -> dict[str, Any]:
    return {"v": 1, "job_id": job.id, "attempt": 1, "seq": 1, "type": "started",
            "level": "info", "message": "started", "data": {},
            "occurred_at": timezone.now().isoformat(), "worker": "test"}  # fmt: skip


def test_live_and_test_mode_jobs_have_slots_apart(
    tenant, make_dataset, django_capture_on_commit_callbacks
):
    """A tenant's free test-mode jobs (up to five a day, each up to the time limit) never
    hold its billed live job back: each mode has its own slot."""
    dataset = make_dataset(tenant)
    with django_capture_on_commit_callbacks(execute=True):
        t1, t2 = create(tenant, dataset, livemode=False), create(tenant, dataset, False)
        live, live2 = create(tenant, dataset), create(tenant, dataset)
    assert sent() == [t1.id, live.id]
    assert reload(t2).dispatched_at is None and reload(live2).dispatched_at is None
    with django_capture_on_commit_callbacks(execute=True):
        end(t1)
    assert sent() == [t1.id, live.id, t2.id]


def test_a_cancelled_waiting_job_is_never_sent_and_a_cancel_frees_the_slot(
    tenant, make_dataset, django_capture_on_commit_callbacks
):
    dataset = make_dataset(tenant)
    with django_capture_on_commit_callbacks(execute=True):
        first, second, third = (create(tenant, dataset) for _ in range(3))
        fine_tune_cancel(tenant=tenant, job_id=second.id, livemode=True)
        # Cancelling the job that holds the slot sends the next one still waiting.
        fine_tune_cancel(tenant=tenant, job_id=first.id, livemode=True)
    assert sent() == [first.id, third.id]
    assert reload(second).status == Status.CANCELLED and reload(second).dispatched_at is None
    # The worker confirms the first job's cancel: nothing more is sent.
    with django_capture_on_commit_callbacks(execute=True):
        end(first, "cancelled")
    assert dispatch.fine_tunes_dispatch_sweep() == 0
    assert sent() == [first.id, third.id]


def test_the_sweep_sends_what_a_lost_dispatch_left_and_only_once(
    tenant, make_dataset, django_capture_on_commit_callbacks
):
    dataset = make_dataset(tenant)
    with django_capture_on_commit_callbacks(execute=True):
        first, second, third = (create(tenant, dataset) for _ in range(3))
    end(first)  # its on-commit dispatch is lost (the process died after the commit)
    assert sent() == [first.id]
    with django_capture_on_commit_callbacks(execute=True):
        assert dispatch.fine_tunes_dispatch_sweep() == 1
        assert dispatch.fine_tunes_dispatch_sweep() == 0
    assert sent() == [first.id, second.id] and reload(third).dispatched_at is None


def test_a_job_marked_sent_whose_send_was_lost_is_sent_by_the_sweep(
    tenant, make_dataset, django_capture_on_commit_callbacks
):
    """The process died between the commit that marked the job sent and the send: the job
    held its tenant's slot with no message behind it, for good. Past a grace, the sweep
    sends it; a job whose send happened is left alone, however long it waits."""
    dataset = make_dataset(tenant)
    lost = create(tenant, dataset)  # its on-commit send never runs
    assert reload(lost).dispatched_at is not None and sent() == []
    with django_capture_on_commit_callbacks(execute=True):
        assert dispatch.fine_tunes_dispatch_sweep() == 0  # it may still be sending
    past = timezone.now() - timedelta(seconds=dispatch.SEND_GRACE_S + 1)
    FineTuneJob.objects.unscoped().filter(pk=lost.pk).update(dispatched_at=past)
    with django_capture_on_commit_callbacks(execute=True):
        assert dispatch.fine_tunes_dispatch_sweep() == 1
    assert sent() == [lost.id]
    FineTuneJob.objects.unscoped().filter(pk=lost.pk).update(dispatched_at=past)
    with django_capture_on_commit_callbacks(execute=True):
        assert dispatch.fine_tunes_dispatch_sweep() == 0  # sent: waiting on the queue
    assert sent() == [lost.id]


def test_a_job_whose_message_was_lost_before_a_worker_started_it_is_sent_again(
    tenant, make_dataset, django_capture_on_commit_callbacks, settings
):
    """A worker killed between taking the message and starting the job (messages are
    acknowledged on receipt), or a Redis that lost the queue: the job is neither on the
    queue nor running. Found so twice, a heartbeat timeout apart, it is sent again as a new
    attempt in its slot (the lease covered only running jobs: it sat queued for good, its
    tenant's later jobs behind it)."""
    dataset = make_dataset(tenant)
    with django_capture_on_commit_callbacks(execute=True):
        job, later = create(tenant, dataset), create(tenant, dataset)
    past = timezone.now() - timedelta(seconds=dispatch.SEND_GRACE_S + 1)
    FineTuneJob.objects.unscoped().filter(pk=job.pk).update(dispatched_at=past)
    now = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        dispatch.fine_tunes_dispatch_sweep(now=now)  # on the queue: waiting its turn
    assert sent() == [job.id]
    queue().delete(Queue.TRAINING.value)  # taken by a worker that died at once
    timeout = settings.FINETUNE_HEARTBEAT_TIMEOUT_S
    with django_capture_on_commit_callbacks(execute=True):
        dispatch.fine_tunes_dispatch_sweep(now=now)  # not yet: its start may be on its way
        dispatch.fine_tunes_dispatch_sweep(now=now + timedelta(seconds=timeout / 2))
    assert sent() == [] and reload(job).attempt == 1
    with django_capture_on_commit_callbacks(execute=True):
        dispatch.fine_tunes_dispatch_sweep(now=now + timedelta(seconds=timeout * 1.5))
    assert [(r["job_id"], r["attempt"]) for r in sent_requests()] == [(job.id, 2)]
    assert said(reload(job), "no longer on the queue") and reload(later).dispatched_at is None


def test_the_lease_giving_up_frees_the_slot_and_a_retry_keeps_it(
    tenant, make_dataset, django_capture_on_commit_callbacks, settings
):
    dataset = make_dataset(tenant)
    with django_capture_on_commit_callbacks(execute=True):
        first, second = create(tenant, dataset), create(tenant, dataset)
    fine_tune_event_apply(event=_started(first))
    later = timezone.now() + timedelta(seconds=settings.FINETUNE_HEARTBEAT_TIMEOUT_S * 2)
    with django_capture_on_commit_callbacks(execute=True):
        fine_tune_sweep(now=later)  # attempt 2: sent again, in the same slot
    assert sent() == [first.id, first.id] and reload(second).dispatched_at is None
    FineTuneJob.objects.unscoped().filter(pk=first.pk).update(
        status=Status.RUNNING, heartbeat_at=timezone.now()
    )
    with django_capture_on_commit_callbacks(execute=True):
        fine_tune_sweep(now=later + timedelta(hours=1))  # worker_lost
    assert reload(first).error["code"] == "worker_lost"
    assert sent() == [first.id, first.id, second.id]


def test_more_slots_per_tenant(tenant, make_dataset, django_capture_on_commit_callbacks, settings):
    settings.FINETUNE_DISPATCHED_PER_TENANT = 2
    dataset = make_dataset(tenant)
    with django_capture_on_commit_callbacks(execute=True):
        jobs = [create(tenant, dataset) for _ in range(3)]
    assert sent() == [jobs[0].id, jobs[1].id]
    assert said(reload(jobs[2]), "at most 2 run or wait")


def test_a_send_that_fails_leaves_the_job_waiting_for_the_sweep(
    tenant, make_dataset, django_capture_on_commit_callbacks, monkeypatch
):
    dataset = make_dataset(tenant)
    with django_capture_on_commit_callbacks(execute=True):
        first, second, third = (create(tenant, dataset) for _ in range(3))
    down = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    monkeypatch.setattr(dispatch, "_redis", lambda: down)
    with django_capture_on_commit_callbacks(execute=True):
        end(first)
    # Not failed (and so not the next, and the next, failed after it): back to waiting.
    assert reload(second).status == Status.QUEUED and reload(second).dispatched_at is None
    assert dispatch.fine_tunes_dispatch_sweep() == 0  # the queue is still down
    monkeypatch.undo()
    with django_capture_on_commit_callbacks(execute=True):
        assert dispatch.fine_tunes_dispatch_sweep() == 1
    assert sent() == [first.id, second.id] and reload(third).dispatched_at is None


def _waiting_jobs(count: int) -> tuple[Any, list[FineTuneJob]]:
    """A tenant (on pro) with ``count`` jobs waiting and none sent."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    from datasets.services import dataset_create
    from tests.finetuning.conftest import read_rows, rows_file

    tenant = TenantFactory()
    subscribe(tenant, "pro")
    rows = read_rows("support_tickets.jsonl")[:60]
    dataset = dataset_create(tenant=tenant, upload=SimpleUploadedFile("d.jsonl", rows_file(rows)))
    jobs = [create(tenant, dataset) for _ in range(count)]
    FineTuneJob.objects.for_tenant(tenant).update(dispatched_at=None)
    queue().delete(Queue.TRAINING.value)
    return tenant, jobs


def test_concurrent_dispatches_send_each_job_once_within_the_slots(
    transactional_db, monkeypatch, settings
):
    """Four processes dispatch one tenant's jobs at once, each waiting, once it has counted
    the free slots, for the others to count too (or a second: they are then waiting for its
    lock): without the tenant's lock all four saw two free slots. NOTE: it guards the lock
    on PostgreSQL; on SQLite, IMMEDIATE transactions serialise them with or without it."""
    settings.FINETUNE_DISPATCHED_PER_TENANT = 2
    tenant, jobs = _waiting_jobs(5)
    all_counted = threading.Barrier(4, timeout=1)
    count = dispatch._free_slots

    def count_then_wait(tenant_id: str) -> int:
        free = count(tenant_id)
        with contextlib.suppress(threading.BrokenBarrierError):
            all_counted.wait()
        return free

    monkeypatch.setattr(dispatch, "_free_slots", count_then_wait)

    def dispatch_once(_: int) -> list[str]:
        try:
            return dispatch.fine_tunes_dispatch(tenant_id=tenant.pk)
        finally:
            connection.close()

    with ThreadPoolExecutor(4) as pool:
        claimed = [job_id for ids in pool.map(dispatch_once, range(4)) for job_id in ids]
    assert sorted(claimed) == sorted([jobs[0].id, jobs[1].id])
    assert sorted(sent()) == sorted(claimed)


def test_two_jobs_ending_at_once_send_the_next_two_once_each(transactional_db, settings):
    """Two consumers apply the ends of a tenant's two running jobs at the same moment; each
    dispatches after its commit."""
    settings.FINETUNE_DISPATCHED_PER_TENANT = 2
    tenant, jobs = _waiting_jobs(5)
    assert dispatch.fine_tunes_dispatch(tenant_id=tenant.pk) == [jobs[0].id, jobs[1].id]
    queue().delete(Queue.TRAINING.value)
    both = threading.Barrier(2, timeout=10)

    def end_one(job: FineTuneJob) -> None:
        try:
            both.wait()
            end(job)
        finally:
            connection.close()

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(end_one, jobs[:2]))
    assert sorted(sent()) == sorted([jobs[2].id, jobs[3].id])
    assert reload(jobs[4]).dispatched_at is None
