"""The API publishes classifications with one LPUSH of a message it builds itself (see
``inference.dispatch.task_message``): that message must be the one Celery's own
``send_task`` would have published, or a Celery worker would read it differently."""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Any

import redis

from config.celery import app
from inference.dispatch import task_message
from tests.workers.helpers import make_request
from workers.contract import Queue, TaskName

PARITY_QUEUE = "dispatch-parity"  # no worker consumes it


def _celery_message(request: dict[str, Any], expires: float) -> dict[str, Any]:
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    client.delete(PARITY_QUEUE)
    app.send_task(
        TaskName.CLASSIFY.value,
        args=[request],
        queue=PARITY_QUEUE,
        task_id=str(request["request_id"]),
        expires=expires,
        argsrepr=f"<classify {request['request_id']}>",
        kwargsrepr="{}",
    )
    raw = client.lpop(PARITY_QUEUE)
    assert isinstance(raw, bytes)
    message: dict[str, Any] = json.loads(raw)
    return message


def _body(message: dict[str, Any]) -> Any:
    return json.loads(base64.b64decode(str(message["body"])))


def test_the_message_is_the_one_celery_send_task_publishes() -> None:
    request = make_request(["It broke on day one."], labels=["complaint", "praise"])
    request["deadline"] = time.time() + 30
    ours: dict[str, Any] = json.loads(task_message(request))
    theirs = _celery_message(dict(request), expires=30)

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
    headers = json.loads(task_message(request))["headers"]
    assert _iso_seconds(headers["expires"]) <= time.time() + 0.5


def _iso_seconds(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value).timestamp()
