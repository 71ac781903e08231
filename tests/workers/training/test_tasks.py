"""The training task's messages on the real Redis: a finished job's usage rides in its
``succeeded`` event (the platform bills it when, and only if, it marks the job succeeded),
and nothing goes to the usage stream on the worker's own say-so."""

from __future__ import annotations

import os
from decimal import Decimal
from typing import Any

import pytest
import redis
from kombu import Connection

from tests.workers.training.conftest import make_request
from tests.workers.usage_queue import drain_usage_events
from workers.contract import TrainResult, attempt_key, attempt_taken_key, cancel_key
from workers.training import tasks
from workers.training.events import events_queue

RESULT: TrainResult = {
    "artifact": "a" * 64,
    "labels": ["billing", "bug"],
    "metrics": {"accuracy": 0.9, "macro_f1": 0.88, "train_examples": 48},
    "trained_tokens": 1234,
    "compute_ms": 55.0,
}


@pytest.fixture
def client() -> Any:
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    keys = (
        events_queue.name,
        attempt_key("ftjob_test"),
        cancel_key("ftjob_test"),
        *(attempt_taken_key("ftjob_test", attempt) for attempt in range(1, 4)),
    )
    client.delete(*keys)
    drain_usage_events()
    yield client
    client.delete(*keys)


def published_events() -> list[dict[str, Any]]:
    with Connection(os.environ["REDIS_URL"]) as conn, conn.SimpleQueue(events_queue) as queue:
        found = []
        while True:
            try:
                message = queue.get(timeout=0.5)
            except queue.Empty:
                return found
            found.append(message.payload)
            message.ack()


def test_a_finished_job_carries_its_usage_in_its_success_and_publishes_none(client, monkeypatch):
    monkeypatch.setattr(tasks, "train_run", lambda ctx: dict(RESULT))
    tasks.train(make_request("f" * 64))
    events = published_events()
    assert [e["type"] for e in events] == ["started", "succeeded"]
    data = events[-1]["data"]
    assert {k: data[k] for k in RESULT} == RESULT
    usage = data["usage"]
    assert (usage["event_id"], usage["kind"], usage["model"]) == (
        "ftjob_test",
        "fine_tune",
        "ft:minilm-l6:test:abc",
    )
    assert (usage["tenant_id"], usage["api_key_id"], usage["livemode"]) == (
        "ten_test",
        "key_test",
        False,
    )
    assert (usage["tokens"], usage["inputs"], usage["compute_ms"]) == (1234, 48, 55.0)
    # Costed here, at this pool's price (the platform does not know the hardware's).
    assert Decimal(usage["cost_micros"]) == Decimal("1.5278") and usage["pool"] == "cpu"
    # The worker no longer meters the job itself: a job cancelled before the platform applies
    # this success is never billed.
    assert drain_usage_events() == []


def test_a_second_message_of_one_attempt_is_dropped_not_trained_again(client, monkeypatch):
    """The platform's send raised after the broker had taken the message, and its sweep sent
    the attempt again: the worker trained it twice (billed once, the compute spent twice)."""
    runs = []
    monkeypatch.setattr(tasks, "train_run", lambda ctx: runs.append(1) or dict(RESULT))
    request = make_request("f" * 64)
    tasks.train(request)
    tasks.train(request)  # the same attempt's second message
    assert len(runs) == 1
    assert [e["type"] for e in published_events()] == ["started", "succeeded"]
    tasks.train({**request, "attempt": request["attempt"] + 1})  # the platform's retry runs
    assert len(runs) == 2


def test_a_job_cancelled_before_it_starts_sends_no_usage_at_all(client, monkeypatch):
    monkeypatch.setattr(tasks, "train_run", lambda ctx: dict(RESULT))
    client.set(cancel_key("ftjob_test"), 1)
    tasks.train(make_request("f" * 64))
    assert [e["type"] for e in published_events()] == ["cancelled"]
    assert drain_usage_events() == []


def test_an_attempt_given_up_for_another_stops_at_its_next_step_and_says_nothing(
    client, monkeypatch
):
    """It had gone silent (the platform scheduled attempt 2) and came back: it trained to the
    end, holding the one-job worker, for a result the platform then threw away."""
    steps = []

    def train_run(ctx: Any) -> TrainResult:
        for step in range(100):
            if step == 3:
                client.set(attempt_key("ftjob_test"), 2)  # the platform's retry
            ctx.step()
            steps.append(step)
        return dict(RESULT)  # type: ignore[return-value]

    monkeypatch.setattr(tasks, "train_run", train_run)
    client.set(attempt_key("ftjob_test"), 1)
    tasks.train(make_request("f" * 64))
    assert steps == [0, 1, 2]
    # No "cancelled" of its own: the job lives on as attempt 2.
    assert [e["type"] for e in published_events()] == ["started"]
    assert drain_usage_events() == []


def test_progress_the_broker_cannot_take_is_dropped_and_training_goes_on(client, monkeypatch):
    """A Redis restart aborted a running job at its next progress event (the attempt lost,
    one of two), and its failure could not be reported either."""
    from kombu.messaging import Producer
    from redis.exceptions import ConnectionError as RedisConnectionError

    publish = Producer.publish

    def flaky(self: Any, body: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(body, dict) and body.get("type") in ("progress", "log"):
            raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379.")
        return publish(self, body, *args, **kwargs)

    def train_run(ctx: Any) -> TrainResult:
        for epoch in range(3):
            ctx.emit("progress", f"epoch {epoch}", data={"epoch": epoch})
            ctx.step()
        return dict(RESULT)  # type: ignore[return-value]

    monkeypatch.setattr(Producer, "publish", flaky)
    monkeypatch.setattr(tasks, "train_run", train_run)
    tasks.train(make_request("f" * 64))
    assert [e["type"] for e in published_events()] == ["started", "succeeded"]


def test_a_redis_restart_between_steps_is_not_a_cancel_nor_a_failure(client, monkeypatch):
    """Asking whether the job was cancelled raised while Redis restarted: the job failed for
    good (`internal`), its failure sent once Redis was back."""
    from redis.client import Pipeline
    from redis.exceptions import ConnectionError as RedisConnectionError

    execute = Pipeline.execute
    asked = []

    def restarting(self: Any, *args: Any, **kwargs: Any) -> Any:
        asked.append(1)
        if 2 <= len(asked) <= 4:  # the middle steps: Redis is down
            raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379.")
        return execute(self, *args, **kwargs)

    def train_run(ctx: Any) -> TrainResult:
        for _ in range(6):
            ctx.step()
        return dict(RESULT)  # type: ignore[return-value]

    monkeypatch.setattr(Pipeline, "execute", restarting)
    monkeypatch.setattr(tasks, "train_run", train_run)
    tasks.train(make_request("f" * 64))
    assert len(asked) >= 6
    assert [e["type"] for e in published_events()] == ["started", "succeeded"]


def test_a_job_past_its_time_limit_fails_with_its_code_and_no_usage(client, monkeypatch):
    """The task gives each attempt its request's time limit; a job that reaches it fails
    (``time_limit_exceeded``) and, as every failed job, carries no billable usage: its end
    carries what the attempt used (kind ``compute``: a cost, never billed), and nothing goes
    to the usage stream."""
    import time

    def train_run(ctx: Any) -> TrainResult:
        while True:
            ctx.step()
            time.sleep(0.05)

    monkeypatch.setattr(tasks, "train_run", train_run)
    began = time.monotonic()
    tasks.train(make_request("f" * 64, time_limit_s=0.5))
    assert 0.5 <= time.monotonic() - began < 5
    events = published_events()
    assert [e["type"] for e in events] == ["started", "failed"]
    data = events[-1]["data"]
    assert data["code"] == "time_limit_exceeded"
    used = data["usage"]
    assert (used["event_id"], used["kind"], used["inputs"], used["tokens"]) == (
        "ftjob_test", "compute", 0, 0,
    )  # fmt: skip
    assert 500 <= used["compute_ms"] < 5_000 and Decimal(used["cost_micros"]) > 0
    assert "time limit of 0.5 s" in events[-1]["message"]
    assert drain_usage_events() == []
