"""End to end through a real Celery worker process and the real Redis broker."""

from __future__ import annotations

import json
import os
import time

import pytest
import redis

from tests.workers.helpers import make_request
from tests.workers.usage_queue import drain_usage_events
from workers.celery_app import app
from workers.contract import (
    ClassifyRequest,
    ClassifyResult,
    Queue,
    TaskName,
    reply_key,
    result_key,
)

pytestmark = pytest.mark.usefixtures("live_worker")


def _redis() -> redis.Redis:
    return redis.Redis.from_url(os.environ["REDIS_URL"])


def _send(
    request: ClassifyRequest, expires: float | None = None, wait: float = 30
) -> ClassifyResult | None:
    """Send as the API does and wait for the answer on the request's reply list."""
    app.send_task(
        TaskName.CLASSIFY.value,
        args=[request],
        queue=Queue.INFERENCE.value,
        task_id=request["request_id"],
        expires=expires,
    )
    popped = _redis().blpop([reply_key(request["request_id"])], timeout=wait)
    return None if popped is None else json.loads(popped[1])


def _events_for(request_id: str) -> list[dict[str, object]]:
    return [e for e in drain_usage_events() if e["event_id"] == request_id]


def test_classify_answers_and_meters_exactly_once() -> None:
    request = make_request(
        ["I absolutely love this product, it works great", "Terrible, it broke on day one"],
        labels=["positive", "negative"],
    )
    result = _send(request)
    assert result is not None and "error" not in result, result
    assert result["request_id"] == request["request_id"]
    # Kept for a retry under the same request id.
    assert json.loads(_redis().get(result_key(request["request_id"]))) == result
    assert [row["label"] for row in result["results"]] == ["positive", "negative"]

    events = _events_for(request["request_id"])
    assert len(events) == 1
    event = events[0]
    assert event["tenant_id"] == "ten_test" and event["model"] == "minilm-l6"
    usage = result["usage"]
    assert (event["inputs"], event["tokens"], event["compute_ms"]) == (
        usage["inputs"],
        usage["tokens"],
        usage["compute_ms"],
    )


def test_expired_request_is_not_run_and_not_metered() -> None:
    request = make_request(["too late"], labels=["a", "b"], deadline=time.time() - 1)
    result = _send(request)
    assert result is not None and result["error"]["code"] == "expired"
    assert result["results"] == [] and result["usage"]["inputs"] == 0
    assert _events_for(request["request_id"]) == []


def test_message_past_its_celery_expiry_is_dropped_unrun() -> None:
    # The API also sends `expires`: a message that waited past it is dropped by Celery
    # before the task runs: no answer, no usage.
    request = make_request(["too late"], labels=["a", "b"])
    assert _send(request, expires=-1, wait=2) is None
    assert _events_for(request["request_id"]) == []


def test_unknown_base_model_is_an_error_and_not_metered() -> None:
    request = make_request(["hello"], labels=["a", "b"], base_model="gpt-17")
    result = _send(request)
    assert result is not None and result["error"]["code"] == "model_unavailable"
    assert _events_for(request["request_id"]) == []
