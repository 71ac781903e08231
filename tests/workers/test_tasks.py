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
    # NOTE: redis-py 8 gives a client a 5 s socket timeout unless told: a BLPOP waiting
    # longer (a 96-input message on a slow or busy machine) would time out in the client.
    return redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=180)


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


def test_an_answer_nobody_can_retry_for_is_kept_only_while_its_api_may_look() -> None:
    from workers.contract import RESULT_TTL_S

    request = make_request(["no retry will come"], labels=["a", "b"])
    request["keep_result"] = False
    result = _send(request)
    assert result is not None and "error" not in result, result
    assert 0 < _redis().ttl(result_key(request["request_id"])) < RESULT_TTL_S
    assert len(_events_for(request["request_id"])) == 1  # still metered


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


def _wait(request: ClassifyRequest, wait: float = 30) -> ClassifyResult | None:
    popped = _redis().blpop([reply_key(request["request_id"])], timeout=wait)
    return None if popped is None else json.loads(popped[1])


def test_a_coalesced_message_answers_and_meters_each_request_on_its_own() -> None:
    """What the API sends: the requests one process had in flight, in one message. Each gets
    its own answer (the same as sent alone), and only answered ones are metered."""
    praise = make_request(["I absolutely love this product"], labels=["positive", "negative"])
    few_shot = make_request(
        ["my card was charged twice", "the parcel never came"],
        examples=[
            {"text": "refund my payment", "label": "billing"},
            {"text": "where is my delivery", "label": "shipping"},
        ],
    )
    late = make_request(["too late"], labels=["a", "b"], deadline=time.time() - 1)
    no_labels = make_request(["what is this about"])
    unknown = make_request(["hello"], labels=["a", "b"], base_model="gpt-17")
    batch = [praise, late, few_shot, no_labels, unknown]
    app.send_task(
        TaskName.CLASSIFY_BATCH.value,
        args=[batch],
        queue=Queue.INFERENCE.value,
        expires=30,
    )
    answers = {r["request_id"]: _wait(r) for r in batch}
    assert all(answer is not None for answer in answers.values()), answers

    assert answers[late["request_id"]]["error"]["code"] == "expired"  # type: ignore[index]
    assert answers[no_labels["request_id"]]["error"]["code"] == "invalid_request"  # type: ignore[index]
    assert answers[unknown["request_id"]]["error"]["code"] == "model_unavailable"  # type: ignore[index]
    for request in (praise, few_shot):
        together = answers[request["request_id"]]
        assert together is not None and "error" not in together, together
        alone = _send({**request, "request_id": f"{request['request_id']}-alone"})
        assert alone is not None
        assert [row["label"] for row in together["results"]] == [
            row["label"] for row in alone["results"]
        ]
        for a, b in zip(together["results"], alone["results"], strict=True):
            assert a["scores"] == pytest.approx(b["scores"], abs=1e-4)
    assert [row["label"] for row in answers[few_shot["request_id"]]["results"]] == [  # type: ignore[index]
        "billing",
        "shipping",
    ]

    events = drain_usage_events()
    metered = {e["event_id"] for e in events}
    assert {praise["request_id"], few_shot["request_id"]} <= metered
    assert not metered & {late["request_id"], no_labels["request_id"], unknown["request_id"]}
    assert sum(1 for e in events if e["event_id"] == praise["request_id"]) == 1


def test_a_request_in_a_coalesced_message_is_not_held_back_by_a_slower_one() -> None:
    """A one-input call that shares a message with a 96-input one is answered once its own
    text is embedded, not when the whole message is."""
    quick = make_request(["I absolutely love this product"], labels=["positive", "negative"])
    sentence = "The parcel arrived two weeks late and the box was crushed on one side. "
    slow = make_request(
        [f"{n}: {sentence * 12}" for n in range(96)], labels=["shipping", "billing"]
    )
    app.send_task(TaskName.CLASSIFY_BATCH.value, args=[[quick, slow]], queue=Queue.INFERENCE.value)
    first = _wait(quick)
    assert first is not None and first["results"][0]["label"] == "positive", first
    assert _redis().llen(reply_key(slow["request_id"])) == 0  # still being computed
    rest = _wait(slow, wait=120)
    assert rest is not None and len(rest["results"]) == 96, rest
    metered = [e["event_id"] for e in drain_usage_events()]
    assert sorted(metered) == sorted([quick["request_id"], slow["request_id"]])


def test_a_partial_cache_hit_is_answered_and_metered_as_one_call() -> None:
    # The API found input 1 in the result cache: the worker gets inputs 0 and 2 only.
    found = {
        "index": 1,
        "label": "negative",
        "score": 0.9,
        "scores": {"positive": 0.1, "negative": 0.9},
        "truncated": False,
        "tokens": 7,
    }
    texts = ["I absolutely love this product, it works great", "It is wonderful, thank you"]
    request = make_request(
        texts,
        labels=["positive", "negative"],
        cache_version="test-partial",
        cached_rows=[found],
    )
    result = _send(request)
    assert result is not None and "error" not in result, result
    rows = result["results"]
    assert [row["index"] for row in rows] == [0, 1, 2]
    assert rows[1] == {k: v for k, v in found.items() if k != "tokens"}
    assert [rows[0]["label"], rows[2]["label"]] == ["positive", "positive"]
    usage = result["usage"]
    assert (usage["inputs"], usage["cached"]) == (3, 1)
    assert usage["tokens"] > 7 and usage["compute_ms"] > 0
    # Metered once, as the whole call: the found row as cached, at no compute.
    (event,) = _events_for(request["request_id"])
    assert (event["inputs"], event["cached"], event["tokens"]) == (3, 1, usage["tokens"])
    # The computed rows are now cached too, each under its own input, at its own index.
    from workers.contract import result_cache_keys

    for text, index in zip(texts, (0, 2), strict=True):
        raw = _redis().get(
            result_cache_keys("test-partial", ["positive", "negative"], None, [text])[0]
        )
        assert raw is not None and json.loads(raw)["index"] == index


def test_a_request_whose_answer_cannot_be_assembled_fails_alone() -> None:
    # Cached rows that do not fit the request (an index past its end) break only that one.
    broken = make_request(
        ["fine text"],
        labels=["a", "b"],
        cached_rows=[
            {"index": 5, "label": "a", "score": 1.0, "scores": {"a": 1.0, "b": 0.0},
             "truncated": False, "tokens": 3},
        ],
    )  # fmt: skip
    good = make_request(["I absolutely love this product"], labels=["positive", "negative"])
    app.send_task(TaskName.CLASSIFY_BATCH.value, args=[[broken, good]], queue=Queue.INFERENCE.value)
    answers = {r["request_id"]: _wait(r) for r in (broken, good)}
    assert answers[broken["request_id"]]["error"]["code"] == "worker_error"  # type: ignore[index]
    assert answers[good["request_id"]]["results"][0]["label"] == "positive"  # type: ignore[index]
    metered = {event["event_id"] for event in drain_usage_events()}
    assert good["request_id"] in metered and broken["request_id"] not in metered
