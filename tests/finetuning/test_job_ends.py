"""Every end of a job shows in its events as an event typed as its new status, exactly
once, whoever ended it: a client reading ``/v1/fine-tunes/{id}/events`` until
``succeeded``, ``failed`` or ``cancelled`` sees every job end (one cancelled while it
waited ended in a ``log`` and was never seen to; an outside audit)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from finetuning.dispatch import job_fail
from finetuning.events import fine_tune_event_apply, fine_tune_sweep
from finetuning.models import FineTuneJob
from finetuning.services import fine_tune_cancel

from .test_events import event, events_of, reload

pytestmark = pytest.mark.django_db

ENDS = ("succeeded", "failed", "cancelled")


def ends_of(job):
    return list(events_of(job).filter(type__in=ENDS).values_list("type", "level", "message"))


def test_a_cancel_is_a_cancelled_event_and_the_workers_confirmation_a_log(job, tenant):
    fine_tune_cancel(tenant=tenant, job_id=job.id, livemode=job.livemode)
    assert ends_of(job) == [("cancelled", "info", "Job cancelled.")]
    # The worker takes the message, sees the cancel and says so: told, not a second end.
    stopped = "The worker stopped the job before it started."
    assert fine_tune_event_apply(event=event(job, 1, "cancelled", message=stopped))
    assert ends_of(job) == [("cancelled", "info", "Job cancelled.")]
    confirmed = events_of(job).get(seq=1)
    assert (confirmed.type, confirmed.message) == ("log", stopped)
    assert reload(job).status == FineTuneJob.Status.CANCELLED


def test_failures_the_platform_finds_are_failed_events(job):
    job_fail(job.id, code="queue_unavailable", message="The training queue is unreachable.")
    assert ends_of(job) == [("failed", "error", "The training queue is unreachable.")]
    job_fail(job.id, code="queue_unavailable", message="again")  # already ended: nothing
    assert len(ends_of(job)) == 1


def test_a_job_whose_worker_is_lost_twice_ends_in_a_failed_event(job):
    for attempt in (1, 2):
        fine_tune_event_apply(event=event(job, 1, "started", attempt=attempt))
        fine_tune_sweep(timeout_s=10, now=timezone.now() + timedelta(seconds=30))
    assert reload(job).status == FineTuneJob.Status.FAILED
    [(kind, level, message)] = ends_of(job)
    assert (kind, level) == ("failed", "error") and "2 times" in message
