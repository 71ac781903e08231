"""The job-events consumer on the real Redis queue: events are applied and acknowledged,
an unusable one goes to the dead-letter list instead of blocking the queue."""

from __future__ import annotations

import json
import os

import pytest
import redis
from django.utils import timezone
from kombu import Connection

from finetuning.consumer import DEAD_LETTER_KEY, JobEventConsumer, events_queue
from finetuning.models import FineTuneEvent, FineTuneJob
from workers.contract import TRAINING_EVENTS_ROUTING_KEY

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def clean_queue():
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    client.delete(events_queue.name, DEAD_LETTER_KEY)
    yield client
    client.delete(events_queue.name, DEAD_LETTER_KEY)


def publish(*bodies):
    with Connection(os.environ["REDIS_URL"]) as conn:
        producer = conn.Producer(serializer="json")
        for body in bodies:
            producer.publish(
                body,
                exchange=events_queue.exchange,
                routing_key=TRAINING_EVENTS_ROUTING_KEY,
                declare=[events_queue],
            )


def test_events_are_applied_and_poison_is_dead_lettered(job, clean_queue):
    started = {
        "v": 1,
        "job_id": job.id,
        "attempt": 1,
        "seq": 1,
        "type": "started",
        "level": "info",
        "message": "Attempt 1 started.",
        "data": {},
        "occurred_at": timezone.now().isoformat(),
        "worker": "w",
    }
    publish({"not": "an event"}, started, started)
    JobEventConsumer(sweep_interval_s=60).run(until_idle=True)
    assert FineTuneJob.objects.unscoped().get(pk=job.pk).status == "running"
    dead = [json.loads(x) for x in clean_queue.lrange(DEAD_LETTER_KEY, 0, -1)]
    assert len(dead) == 1 and dead[0]["event"] == {"not": "an event"}
    assert clean_queue.llen(events_queue.name) == 0


def _event(job, seq, kind, data=None):
    return {
        "v": 1, "job_id": job.id, "attempt": 1, "seq": seq, "type": kind, "level": "info",
        "message": kind, "data": data or {}, "occurred_at": timezone.now().isoformat(),
        "worker": "w",
    }  # fmt: skip


def test_an_event_the_database_refuses_is_dead_lettered_and_holds_up_nothing(job, clean_queue):
    """The audit's case: a diverging job's NaN loss failed the database's JSON check, and the
    event, re-queued forever, held up every tenant's job events behind it. NaN and infinity
    are now stored as null; an event the database still refuses (a negative or overflowing
    sequence number) is a dead letter, and the events after it are applied."""
    refused = [_event(job, -1, "progress"), _event(job, 2**70, "progress")]
    nan = {"epoch": 1, "loss": float("nan"), "nested": [float("inf"), 1.5]}
    publish(*refused, _event(job, 1, "started"), _event(job, 2, "progress", nan))
    JobEventConsumer(sweep_interval_s=60).run(until_idle=True)

    stored = FineTuneJob.objects.unscoped().get(pk=job.pk)
    assert stored.status == "running"
    progress = FineTuneEvent.objects.for_tenant(job.tenant_id).get(job=job, type="progress")
    assert progress.data == {"epoch": 1, "loss": None, "nested": [None, 1.5]}
    dead = [json.loads(x)["event"]["seq"] for x in clean_queue.lrange(DEAD_LETTER_KEY, 0, -1)]
    assert dead == [-1, 2**70]
    assert clean_queue.llen(events_queue.name) == 0


def test_a_jobs_last_word_that_cannot_be_stored_fails_the_job_now_unbilled(job, clean_queue):
    """Dead-lettered, a refused success left its job running until the lease called the
    worker lost and trained it again, to the same end. The job fails at once instead."""
    from metering.models import UsageRecord

    publish(_event(job, 1, "started"), _event(job, -1, "succeeded", {"trained_tokens": 10}))
    JobEventConsumer(sweep_interval_s=60).run(until_idle=True)
    stored = FineTuneJob.objects.unscoped().get(pk=job.pk)
    assert stored.status == "failed" and stored.error["code"] == "internal"
    assert "not billed" in stored.error["message"]
    assert not UsageRecord.objects.unscoped().filter(event_id=job.id).exists()
    assert clean_queue.llen(DEAD_LETTER_KEY) == 1
