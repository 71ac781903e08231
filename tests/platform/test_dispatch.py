"""The API publishes classifications with one LPUSH of a message it builds itself (see
``inference.dispatch.task_message``): that message must be the one Celery's own
``send_task`` would have published, or a Celery worker would read it differently."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from typing import Any

import pytest
import redis

from config.celery import app
from inference.dispatch import Publisher, task_message
from tests.workers.helpers import make_request
from workers.contract import Queue, TaskName

PARITY_QUEUE = "dispatch-parity"  # no worker consumes it


def _celery_message(requests: list[Any], task_id: str, expires: float) -> dict[str, Any]:
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    client.delete(PARITY_QUEUE)
    ids = ",".join(str(r["request_id"]) for r in requests)
    app.send_task(
        TaskName.CLASSIFY_BATCH.value,
        args=[requests],
        queue=PARITY_QUEUE,
        task_id=task_id,
        expires=expires,
        argsrepr=f"<classify_batch {ids}>",
        kwargsrepr="{}",
    )
    raw = client.lpop(PARITY_QUEUE)
    assert isinstance(raw, bytes)
    message: dict[str, Any] = json.loads(raw)
    return message


def _body(message: dict[str, Any]) -> Any:
    return json.loads(base64.b64decode(str(message["body"])))


@pytest.mark.parametrize("coalesced", [1, 3])
def test_the_message_is_the_one_celery_send_task_publishes(coalesced: int) -> None:
    requests = [
        make_request([f"It broke on day {n}."], labels=["complaint", "praise"])
        for n in range(coalesced)
    ]
    for n, request in enumerate(requests):
        request["deadline"] = time.time() + 20 + 5 * n  # the message lasts as the latest
    ours: dict[str, Any] = json.loads(task_message(requests, task_id="t-1"))
    theirs = _celery_message([dict(r) for r in requests], "t-1", expires=20 + 5 * coalesced - 5)

    assert _body(ours) == _body(theirs)
    assert ours["content-type"] == theirs["content-type"] == "application/json"
    assert ours["content-encoding"] == theirs["content-encoding"]
    # Headers: the same keys and values, but for where it came from and the clock.
    varying = {"origin", "expires"}
    assert {k: v for k, v in ours["headers"].items() if k not in varying} == {
        k: v for k, v in theirs["headers"].items() if k not in varying
    }
    assert (
        abs(_iso_seconds(ours["headers"]["expires"]) - _iso_seconds(theirs["headers"]["expires"]))
        < 5
    )
    assert ours["properties"].keys() == theirs["properties"].keys()
    assert ours["properties"]["delivery_info"] == {
        "exchange": "",
        "routing_key": Queue.INFERENCE.value,
    }
    expirations = [int(m["properties"]["expiration"]) for m in (ours, theirs)]  # ms
    assert abs(expirations[0] - expirations[1]) < 5000
    same = {"correlation_id", "delivery_mode", "priority", "body_encoding"}
    assert {k: ours["properties"][k] for k in same} == {k: theirs["properties"][k] for k in same}


def test_an_expired_deadline_publishes_an_already_expired_task() -> None:
    """A deadline already past must not become "never expires": the worker drops it."""
    request = make_request(["late"], labels=["a", "b"])
    request["deadline"] = time.time() - 5
    headers = json.loads(task_message([request]))["headers"]
    assert _iso_seconds(headers["expires"]) <= time.time() + 0.5


def _iso_seconds(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value).timestamp()


def _published(client: redis.Redis) -> list[list[str]]:
    """The request ids in each message on the parity queue, oldest first."""
    messages = [json.loads(raw) for raw in reversed(client.lrange(PARITY_QUEUE, 0, -1))]
    return [[r["request_id"] for r in _body(m)[0][0]] for m in messages]


def test_requests_in_flight_together_travel_in_one_message() -> None:
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    client.delete(PARITY_QUEUE)
    publisher = Publisher(linger_s=0.2, max_requests=4, queue=PARITY_QUEUE)
    requests = [make_request([f"text {n}"], labels=["a", "b"]) for n in range(6)]
    threads = [threading.Thread(target=publisher.publish, args=(r,)) for r in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    published = _published(client)
    # Six requests at once: one full message of four, then the other two.
    assert sorted(len(ids) for ids in published) == [2, 4]
    assert sorted(i for ids in published for i in ids) == sorted(r["request_id"] for r in requests)
    assert (publisher.messages, publisher.requests) == (2, 6)
    # Load shedding counts requests: the queue's length times what a message carries.
    assert publisher.requests_per_message == 3.0
    assert Publisher(linger_s=0, max_requests=4).requests_per_message == 1.0

    # A request on its own goes after the linger, alone.
    client.delete(PARITY_QUEUE)
    began = time.monotonic()
    publisher.publish(requests[0])
    assert 0.15 < time.monotonic() - began < 5
    assert _published(client) == [[requests[0]["request_id"]]]


def test_a_publish_that_fails_fails_every_request_in_it() -> None:
    dead = redis.Redis(port=1, socket_connect_timeout=1)  # nothing listens there
    publisher = Publisher(linger_s=0.05, max_requests=8, queue=PARITY_QUEUE, client=lambda: dead)
    errors: list[BaseException] = []

    def send(n: int) -> None:
        try:
            publisher.publish(make_request([f"text {n}"], labels=["a", "b"]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(errors) == 3 and all(isinstance(e, redis.ConnectionError) for e in errors)
    # The publisher survives and serves the next request once the broker is back.
    publisher._client = lambda: redis.Redis.from_url(os.environ["REDIS_URL"])
    request = make_request(["back"], labels=["a", "b"])
    publisher.publish(request)
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    assert [request["request_id"]] in _published(client)


def test_a_request_that_gives_up_waiting_for_the_broker_is_never_sent() -> None:
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    client.delete(PARITY_QUEUE)
    stuck = threading.Event()

    def slow_client() -> redis.Redis:
        stuck.wait(10)  # the broker hangs while the first message is being sent
        return client

    publisher = Publisher(linger_s=0, max_requests=1, queue=PARITY_QUEUE, client=slow_client)
    publisher.publish_timeout_s = 0.3
    first, second = (make_request([f"text {n}"], labels=["a", "b"]) for n in range(2))
    errors: list[BaseException] = []

    def send(request: Any) -> None:
        try:
            publisher.publish(request)
        except redis.TimeoutError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(r,)) for r in (first, second)]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join(5)
    # Both gave up; the one still waiting to be taken is dropped, and says it was never sent
    # (a 503 at once); the other may reach Redis yet (its caller waits for an answer).
    from inference.dispatch import NotSentError

    assert len(errors) == 2
    assert [isinstance(e, NotSentError) for e in errors] == [False, True]
    stuck.set()
    time.sleep(0.3)
    assert _published(client) == [[first["request_id"]]]
