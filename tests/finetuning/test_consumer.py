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
from finetuning.models import FineTuneJob
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
