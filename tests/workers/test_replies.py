"""Answers its caller gave up on (the API's 503 ``worker_timeout``) are neither delivered nor
billed, whichever of the API and the worker gets to Redis first; any other answer is both."""

from __future__ import annotations

import json
import os
import random
import threading
import time

import pytest
import redis

from tests.workers.helpers import make_request
from tests.workers.usage_queue import drain_usage_events
from workers.contract import (
    ClassifyRequest,
    ClassifyResult,
    abandoned_key,
    reply_key,
    result_key,
)
from workers.replies import replies_send
from workers.usage import usage_event_build


def _redis() -> redis.Redis:
    return redis.Redis.from_url(os.environ["REDIS_URL"])


def _answer(request: ClassifyRequest) -> ClassifyResult:
    return {
        "request_id": request["request_id"],
        "model": request["model"],
        "results": [{"index": 0, "label": "a", "score": 0.9, "scores": {"a": 0.9, "b": 0.1}}],
        "usage": {"inputs": 1, "tokens": 4, "compute_ms": 2.5, "cached": 0},
    }


def _reply(request: ClassifyRequest) -> tuple[ClassifyResult, object, ClassifyRequest]:
    result = _answer(request)
    return result, usage_event_build(request=request, result=result), request


def _billed(request_ids: set[str]) -> set[str]:
    return {e["event_id"] for e in drain_usage_events() if e["event_id"] in request_ids}


def test_an_answer_after_the_caller_gave_up_is_not_delivered_nor_billed() -> None:
    from inference.dispatch import give_up

    drain_usage_events()
    client = _redis()
    late = make_request(["late"], labels=["a", "b"], deadline=time.time() - 0.5)
    in_time = make_request(["in time"], labels=["a", "b"], deadline=time.time() - 0.2)
    early = make_request(["early"], labels=["a", "b"])
    assert give_up(client, late["request_id"]) is None  # the API's 503: nothing came
    replies_send([_reply(late), _reply(in_time), _reply(early)])  # one transaction
    assert client.llen(reply_key(late["request_id"])) == 0
    assert client.get(result_key(late["request_id"])) is None  # no free answer on a retry
    for request in (in_time, early):  # nobody gave up on these
        assert client.llen(reply_key(request["request_id"])) == 1
    ids = {r["request_id"] for r in (late, in_time, early)}
    assert _billed(ids) == {in_time["request_id"], early["request_id"]}


def test_an_answer_delivered_before_the_api_gives_up_is_the_callers_and_billed() -> None:
    from inference.dispatch import give_up

    drain_usage_events()
    request = make_request(["just in time"], labels=["a", "b"], deadline=time.time() - 0.1)
    replies_send([_reply(request)])
    answer = give_up(_redis(), request["request_id"])  # its BLPOP had just timed out
    assert answer is not None and json.loads(answer)["request_id"] == request["request_id"]
    assert _billed({request["request_id"]}) == {request["request_id"]}


def test_a_give_up_racing_the_reply_transaction_bills_exactly_when_it_delivers() -> None:
    """Many rounds of the API's give-up and the worker's reply at the same moment: every
    answer is either taken by the API and billed, or neither."""
    from inference.dispatch import give_up

    drain_usage_events()
    delivered: set[str] = set()
    requests = [
        make_request([f"race {n}"], labels=["a", "b"], deadline=time.time() - 0.1)
        for n in range(60)
    ]
    for request in requests:
        barrier = threading.Barrier(2)

        def api(request_id: str = request["request_id"], barrier=barrier) -> None:
            barrier.wait()
            time.sleep(random.uniform(0, 0.002))  # either may reach Redis first
            if give_up(_redis(), request_id) is not None:
                delivered.add(request_id)

        thread = threading.Thread(target=api)
        thread.start()
        barrier.wait()
        time.sleep(random.uniform(0, 0.002))
        replies_send([_reply(request)])
        thread.join()
    ids = {r["request_id"] for r in requests}
    assert _billed(ids) == delivered
    client = _redis()
    for request in requests:  # an answer left in the list was never anyone's
        assert client.llen(reply_key(request["request_id"])) == 0
        assert client.exists(abandoned_key(request["request_id"]))


def test_a_retry_refused_before_it_is_sent_leaves_the_first_attempt_abandoned(settings) -> None:
    """The first attempt timed out (503); its retry under the same Idempotency-Key is shed
    (503 overloaded) before it reaches the queue; the first attempt's worker then finishes:
    the customer got two 503s and is billed for neither."""
    from core.errors import Overloaded
    from inference.dispatch import classify_dispatch, give_up

    drain_usage_events()
    first = make_request(["shed twice"], labels=["a", "b"], deadline=time.time() - 0.5)
    give_up(_redis(), first["request_id"])
    settings.INFERENCE_MAX_QUEUE_DEPTH = 0  # every request is shed
    with pytest.raises(Overloaded):
        classify_dispatch({**first, "deadline": time.time() + 5}, reuse_result=True)
    replies_send([_reply(first)])
    assert _billed({first["request_id"]}) == set()
    assert _redis().get(result_key(first["request_id"])) is None


def test_a_retry_that_is_sent_takes_the_first_attempts_late_answer_billed_once() -> None:
    from inference.dispatch import classify_dispatch, give_up

    drain_usage_events()
    first = make_request(["answered late"], labels=["a", "b"], deadline=time.time() - 0.5)
    give_up(_redis(), first["request_id"])
    late = threading.Timer(0.3, replies_send, args=([_reply(first)],))  # its worker, late
    late.start()
    answer = classify_dispatch({**first, "deadline": time.time() + 10}, reuse_result=True)
    late.join()
    assert answer["request_id"] == first["request_id"] and "error" not in answer
    assert _billed({first["request_id"]}) == {first["request_id"]}
