"""Answers its caller gave up on (the API's 503 ``worker_timeout``) are neither delivered nor
billed, whichever of the API and the worker gets to Redis first, and whatever Redis does in
between (a stall, an error); any other answer is both."""

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
from workers.contract import ClassifyRequest, ClassifyResult, abandoned_key, reply_key, result_key
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
    for request in requests:  # kept under its result key exactly when it was taken
        taken = request["request_id"] in delivered
        assert client.exists(result_key(request["request_id"])) == int(taken)
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
        classify_dispatch({**first, "deadline": time.time() + 5}, retry=True)
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
    answer = classify_dispatch({**first, "deadline": time.time() + 10}, retry=True)
    late.join()
    assert answer["request_id"] == first["request_id"] and "error" not in answer
    assert _billed({first["request_id"]}) == {first["request_id"]}


def test_an_answer_reaching_redis_past_the_grace_is_dropped_unmarked() -> None:
    """No API waits past its deadline + GIVE_UP_GRACE_S, marked or not: an answer that
    reaches Redis later is neither delivered nor billed; one within the grace is both (its
    API may still be trying to give up while Redis is unreachable)."""
    from workers.contract import GIVE_UP_GRACE_S

    drain_usage_events()
    past = make_request(["past"], labels=["a", "b"], deadline=time.time() - GIVE_UP_GRACE_S - 1)
    within = make_request(["within"], labels=["a", "b"], deadline=time.time() - 1)
    replies_send([_reply(past), _reply(within)])
    client = _redis()
    assert client.llen(reply_key(past["request_id"])) == 0
    assert client.get(result_key(past["request_id"])) is None
    assert client.llen(reply_key(within["request_id"])) == 1
    assert _billed({past["request_id"], within["request_id"]}) == {within["request_id"]}


def test_an_error_answer_is_never_billed_nor_kept_and_dropped_once_given_up() -> None:
    """A worker's error reaches its caller (a 503) unbilled, and is not kept for a retry (it
    runs again); one for a call given up on is dropped: a retry of the call under the same
    request id must not take it for its own answer (and answer 503 while its own message,
    on its way, would be billed)."""
    from inference.dispatch import give_up

    drain_usage_events()
    client = _redis()
    in_time = make_request(["failed"], labels=["a", "b"])
    given_up = make_request(["failed late"], labels=["a", "b"])
    give_up(client, given_up["request_id"])
    for request in (in_time, given_up):
        error = {"request_id": request["request_id"], "error": {"code": "worker_error"}}
        replies_send([(error, None, request)])  # type: ignore[list-item]
    assert client.llen(reply_key(in_time["request_id"])) == 1
    assert client.llen(reply_key(given_up["request_id"])) == 0
    assert not client.exists(result_key(in_time["request_id"]))
    assert _billed({in_time["request_id"], given_up["request_id"]}) == set()


def test_a_lost_blpop_reply_is_seen_by_the_give_up_not_billed_behind_a_503() -> None:
    """The API's BLPOP popped the answer but its reply never arrived (a dropped connection):
    the give-up finds the answer under its result key, so the caller gets the answer it is
    billed for."""
    from inference.dispatch import give_up

    drain_usage_events()
    client = _redis()
    request = make_request(["popped"], labels=["a", "b"], keep_result=False)
    replies_send([_reply(request)])
    assert client.lpop(reply_key(request["request_id"])) is not None  # the lost reply
    answer = give_up(client, request["request_id"])
    assert answer is not None and json.loads(answer)["request_id"] == request["request_id"]
    assert _billed({request["request_id"]}) == {request["request_id"]}
    from workers.contract import RESULT_TTL_S

    # Kept until its API can no longer be giving up on it, not for retries.
    assert 0 < client.ttl(result_key(request["request_id"])) < RESULT_TTL_S


def test_a_retry_that_gets_an_error_gives_the_call_up_so_no_other_attempt_bills_it(
    monkeypatch,
) -> None:
    """Attempt 1 was given up on (503); its retry gets an error from its own worker (503):
    attempt 1's worker, finishing after that, delivers and bills nothing."""
    from inference import dispatch
    from inference.dispatch import classify_dispatch, give_up

    class Sent:  # the retry's message, as if on the queue (no real worker may take it)
        requests_per_message = 1.0

        def publish(self, request: ClassifyRequest, *, retry: bool = False) -> None:
            if retry:  # as the publisher does, with the message
                _redis().delete(abandoned_key(request["request_id"]))

    monkeypatch.setattr(dispatch, "_publisher", Sent)
    drain_usage_events()
    first = make_request(["errs"], labels=["a", "b"], deadline=time.time() + 20)
    give_up(_redis(), first["request_id"])
    retry = {**first, "deadline": time.time() + 10}
    error = {"request_id": first["request_id"], "error": {"code": "worker_error"}}
    threading.Timer(0.3, replies_send, args=([(error, None, retry)],)).start()
    answer = classify_dispatch(retry, retry=True)  # type: ignore[arg-type]
    assert answer.get("error", {}).get("code") == "worker_error"
    replies_send([_reply(first)])  # attempt 1's worker, within its own deadline
    assert _billed({first["request_id"]}) == set()


@pytest.fixture
def stallable_redis(tmp_path, monkeypatch):
    """A Redis of the test's own, which it may freeze (SIGSTOP) and thaw, with the worker's
    replies and the API's dispatch both talking to it."""
    import signal

    from deploy.embedded_redis import start_embedded_redis, stop_embedded_redis
    from inference import dispatch
    from workers import replies

    server, url = start_embedded_redis(str(tmp_path))
    worker = redis.Redis.from_url(url, socket_timeout=10)
    api = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    monkeypatch.setattr(replies, "redis_client", lambda: worker)
    monkeypatch.setattr(replies, "_deliver", lambda: worker.register_script(replies.DELIVER))
    monkeypatch.setattr(dispatch, "redis_client", lambda: api)
    monkeypatch.setattr(dispatch, "give_up_client", lambda: api)

    class Stall:
        client = redis.Redis.from_url(url)

        def freeze(self) -> None:
            os.kill(server.pid, signal.SIGSTOP)

        def thaw(self) -> None:
            os.kill(server.pid, signal.SIGCONT)

    stall = Stall()
    yield stall
    stall.thaw()
    stop_embedded_redis(server)


def _stream_ids(client: redis.Redis) -> set[str]:
    from workers.contract import USAGE_STREAM

    return {json.loads(f[b"event"])["event_id"] for _, f in client.xrange(USAGE_STREAM)}


def test_a_reply_held_up_by_a_stall_past_the_grace_is_not_billed(stallable_redis, monkeypatch):
    """The audit's case: the worker's reply reached a frozen Redis before the deadline and
    ran only once Redis thawed, after the API had answered 503: Redis's clock, at the time
    of the writes, decides; the 503 is not billed."""
    from workers import replies

    monkeypatch.setattr(replies, "GIVE_UP_GRACE_S", 0.5)
    request = make_request(["stalled"], labels=["a", "b"], deadline=time.time() + 0.5)
    stallable_redis.freeze()
    worker = threading.Thread(target=replies_send, args=([_reply(request)],))
    worker.start()  # sent before the deadline, stuck in the frozen server
    time.sleep(1.5)  # past deadline + grace: the API has given up, unable to mark it
    stallable_redis.thaw()
    worker.join(10)
    assert stallable_redis.client.llen(reply_key(request["request_id"])) == 0
    assert request["request_id"] not in _stream_ids(stallable_redis.client)


def test_a_stall_while_the_api_waits_bills_exactly_when_the_api_takes_the_answer(
    stallable_redis,
):
    """Redis freezes while the API waits; the worker's answer and the API's give-up are both
    held up, and run in either order once it thaws (within the grace): the API, which kept
    trying rather than answer 503 at once, either takes the answer (billed once) or marked
    the call abandoned first (a 503, billed for nothing)."""
    from inference import dispatch

    request = make_request(["waited"], labels=["a", "b"], deadline=time.time() + 0.6)
    got: list[bytes | None] = []

    def api() -> None:
        got.append(
            dispatch._answer_await(
                dispatch.redis_client(), request["request_id"], request["deadline"]
            )
        )

    waiting = threading.Thread(target=api)
    waiting.start()
    time.sleep(0.1)
    stallable_redis.freeze()  # the API's BLPOP times out (its socket timeout is 1 s)
    worker = threading.Thread(target=replies_send, args=([_reply(request)],))
    worker.start()
    time.sleep(2.0)  # past the deadline, within the grace (10 s)
    stallable_redis.thaw()
    worker.join(10)
    waiting.join(15)
    assert len(got) == 1
    billed = request["request_id"] in _stream_ids(stallable_redis.client)
    assert billed == (got[0] is not None)
    if got[0] is not None:
        assert json.loads(got[0])["request_id"] == request["request_id"]


def test_a_message_that_may_have_been_sent_is_waited_for_not_answered_503(monkeypatch) -> None:
    """The LPUSH failed after its bytes may have left (a timeout): the request is waited for
    like a sent one, so a worker's answer to it is the caller's, not a billed 503; one that
    never left is a 503 at once."""
    from core.errors import Overloaded
    from inference import dispatch

    class Failing:
        requests_per_message = 1.0

        def __init__(self, error: Exception) -> None:
            self.error = error

        def publish(self, request: ClassifyRequest, **_: object) -> None:
            raise self.error

    drain_usage_events()
    request = make_request(["maybe sent"], labels=["a", "b"], deadline=time.time() + 5)
    monkeypatch.setattr(dispatch, "_publisher", lambda: Failing(redis.TimeoutError("slow")))
    worker = threading.Timer(0.3, replies_send, args=([_reply(request)],))
    worker.start()
    answer = dispatch.classify_dispatch(request, retry=False)
    worker.join()
    assert answer["request_id"] == request["request_id"] and "error" not in answer
    assert _billed({request["request_id"]}) == {request["request_id"]}

    never = make_request(["never sent"], labels=["a", "b"], deadline=time.time() + 5)
    monkeypatch.setattr(dispatch, "_publisher", lambda: Failing(dispatch.NotSentError("no")))
    began = time.monotonic()
    with pytest.raises(Overloaded) as refused:
        dispatch.classify_dispatch(never, retry=False)
    assert refused.value.code == "broker_unavailable" and time.monotonic() - began < 1


def test_a_retry_waits_past_an_earlier_attempts_error_for_its_own_answer(monkeypatch) -> None:
    """Attempt 1's worker fails after its caller gave up and its retry cleared the mark: the
    retry takes that error for what it is, not its own answer, and waits for its own."""
    from inference import dispatch
    from workers import errors

    class Sent:
        requests_per_message = 1.0

        def publish(self, request: ClassifyRequest, *, retry: bool = False) -> None:
            return None

    monkeypatch.setattr(dispatch, "_publisher", Sent)
    drain_usage_events()
    first = make_request(["first errs"], labels=["a", "b"], deadline=time.time() + 1)
    retry = {**first, "deadline": time.time() + 10}
    stale = errors.error_result(first, errors.WORKER_ERROR, errors.WORKER_ERROR_MESSAGE)
    replies_send([(stale, None, first)])  # attempt 1's error, in time: delivered
    threading.Timer(0.3, replies_send, args=([_reply(retry)],)).start()  # type: ignore[arg-type]
    answer = dispatch.classify_dispatch(retry, retry=True)  # type: ignore[arg-type]
    assert "error" not in answer and answer["request_id"] == first["request_id"]
    assert _billed({first["request_id"]}) == {first["request_id"]}


def test_a_retry_clears_the_mark_with_its_message_so_a_fast_answer_is_its_own() -> None:
    """The earlier attempt's abandoned mark goes in the transaction that queues the retry:
    a worker answering the instant the message lands is delivered (and billed), not
    dropped as abandoned."""
    from inference.dispatch import Publisher, give_up

    client = _redis()
    queue = "test:retry-publish"
    client.delete(queue)
    first = make_request(["fast"], labels=["a", "b"])
    give_up(client, first["request_id"])
    publisher = Publisher(linger_s=0, max_requests=1, queue=queue)
    publisher.publish(first, retry=True)
    assert client.llen(queue) == 1
    assert not client.exists(abandoned_key(first["request_id"]))
    plain = make_request(["not a retry"], labels=["a", "b"])
    give_up(client, plain["request_id"])
    publisher.publish(plain)
    assert client.exists(abandoned_key(plain["request_id"]))  # a plain message keeps it
    client.delete(queue)
