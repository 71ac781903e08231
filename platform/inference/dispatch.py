"""Hands a classification to the workers and waits for the answer, within limits: a full
queue is refused at once (503 ``overloaded``) and a worker that does not answer in time is a
503 ``worker_timeout``, never a hung request."""

from __future__ import annotations

import base64
import functools
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

import redis
from django.conf import settings

from config.celery import app
from core.errors import Overloaded
from workers.contract import (
    ABANDONED_TTL_S,
    GIVE_UP_GRACE_S,
    ClassifyRequest,
    ClassifyResult,
    Queue,
    TaskName,
    abandoned_key,
    reply_key,
    result_key,
)

from . import messages

# The queue's depth is read at most this often per process: a precise figure is not needed
# to shed load, and one Redis round trip per request is.
DEPTH_TTL_S = 0.25
_depth = {"value": 0, "read_at": 0.0}
_depth_lock = threading.Lock()
_ORIGIN = f"api@{socket.gethostname()}"
# An LPUSH takes well under a millisecond; a request gives up waiting for it after this.
PUBLISH_TIMEOUT_S = 10.0
# Between two tries at Redis while it is unreachable, waiting for an answer or giving up.
RETRY_PAUSE_S = 0.25
# An API that cannot reach Redis to give up answers 503 this long after Redis stops taking
# answers for the request (``hard_stop_of``): for clock skew between its machine and Redis's.
GIVE_UP_SKEW_S = 5.0
# A give-up's socket timeout: short, so that tries during a stall end near the hard stop.
GIVE_UP_SOCKET_TIMEOUT_S = 2.0


class NotSentError(redis.TimeoutError):
    """The classify message never left this process: no worker can answer (or bill) it."""


# A wait for an answer is BLPOPs of at most this long, each on a socket that times out a
# few seconds later: a stall of Redis then holds a waiting request only that much past the
# point where it would give up, not a whole INFERENCE_TIMEOUT_S more.
BLPOP_SLICE_S = 5.0


@functools.cache
def redis_client() -> redis.Redis:
    # NOTE: the socket timeout must outlast the longest BLPOP we issue (BLPOP_SLICE_S).
    return redis.Redis.from_url(
        settings.REDIS_URL, socket_timeout=BLPOP_SLICE_S + 5, socket_connect_timeout=5
    )


def queue_depth(*, fresh: bool = True) -> int:
    now = time.monotonic()
    with _depth_lock:
        if not fresh and now - _depth["read_at"] < DEPTH_TTL_S:
            return int(_depth["value"])
    # NOTE: Celery's Redis transport keeps a queue's default-priority messages in a list
    # named after the queue.
    value = int(cast(Any, redis_client().llen(Queue.INFERENCE.value)))
    with _depth_lock:
        _depth["value"], _depth["read_at"] = value, now
    return value


def task_message(requests: list[ClassifyRequest], task_id: str | None = None) -> bytes:
    """The message ``app.send_task(TaskName.CLASSIFY_BATCH, args=[requests],
    queue=inference, task_id=…, expires=…)`` would put on the inference queue, for one LPUSH.

    NOTE: measured, send_task cost ~0.8 ms of CPU a request (routing, signals, kombu's
    producer pool and publish machinery) against ~0.06 ms for the LPUSH itself, out of ~5 ms
    for a whole request. Celery still builds the task message (``as_task_v2``: protocol 2
    headers, properties and body); only kombu's Redis-transport envelope is written here,
    as ``kombu.transport.virtual.Channel.basic_publish`` writes it for the default
    (anonymous) exchange: base64 body, delivery info and tag. The test
    tests/platform/test_dispatch.py checks it against what send_task publishes, and every
    end-to-end test has a real Celery worker consume it."""
    task_id = task_id or str(uuid.uuid4())
    # The message outlives none of its requests' deadlines; the worker drops each request
    # that is past its own.
    expires_s = max(max(r["deadline"] for r in requests) - time.time(), 0.0)
    # NOTE: Celery would otherwise put a repr of the arguments (customers' texts) in the
    # message headers; worker logs have no use for them.
    ids = ",".join(r["request_id"] for r in requests)
    reprs = {"argsrepr": f"<classify_batch {ids}>", "kwargsrepr": "{}"}
    headers, properties, body, _ = app.amqp.as_task_v2(
        task_id,
        TaskName.CLASSIFY_BATCH.value,
        args=(requests,),
        kwargs={},
        expires=expires_s,
        origin=_ORIGIN,
        argsrepr=reprs["argsrepr"],
        kwargsrepr=reprs["kwargsrepr"],
        ignore_result=None,  # type: ignore[arg-type]  # what send_task passes when unset
    )
    payload = json.dumps(body, separators=(",", ":")).encode()
    envelope = {
        "body": base64.b64encode(payload).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            **properties,
            **reprs,  # send_task copies its options into the properties too
            "delivery_mode": 2,
            "expiration": str(int(expires_s * 1000)),  # as kombu's publish writes it (ms)
            "delivery_info": {"exchange": "", "routing_key": Queue.INFERENCE.value},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope, separators=(",", ":")).encode()


class _Pending:
    __slots__ = ("error", "published", "request", "retry")

    def __init__(self, request: ClassifyRequest, retry: bool) -> None:
        self.request, self.retry = request, retry
        self.published = threading.Event()
        self.error: BaseException | None = None


class Publisher:
    """Puts this process's classifications on the inference queue, coalescing the ones in
    flight at the same moment into one message (``TaskName.CLASSIFY_BATCH``).

    A request thread hands its request over and waits until it is published; one publishing
    thread takes everything waiting (after lingering ``linger_s`` for company), up to
    ``max_requests``, and LPUSHes one message. Each request still has its own reply list,
    answer and usage event; what is shared is the worker's per-message work (Celery's
    consumer, tracing, the reply transaction), ~1.1 ms of CPU a message measured with a
    no-op task, and the forward passes the requests' texts then share anyway."""

    def __init__(
        self,
        *,
        linger_s: float,
        max_requests: int,
        queue: str = Queue.INFERENCE.value,
        client: Callable[[], redis.Redis] | None = None,
    ) -> None:
        self.linger_s, self.max_requests = linger_s, max(1, max_requests)
        self.queue, self._client = queue, client or redis_client
        self._cond = threading.Condition()
        self._pending: list[_Pending] = []
        self._thread: threading.Thread | None = None
        self.publish_timeout_s = PUBLISH_TIMEOUT_S
        self.messages = 0  # published, for tests and benchmarks
        self.requests = 0

    @property
    def requests_per_message(self) -> float:
        """What this process's messages have carried on average (1 before the first)."""
        return self.requests / self.messages if self.messages else 1.0

    def publish(self, request: ClassifyRequest, *, retry: bool = False) -> None:
        """Returns once the request is on the queue; raises NotSentError when it never will
        be, and what the LPUSH raised otherwise (it may have reached Redis all the same).
        ``retry``: a retry under an earlier attempt's request id, whose abandoned mark goes
        in the same transaction as the message (``classify_dispatch``)."""
        item = _Pending(request, retry)
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="classify-publisher", daemon=True
                )
                self._thread.start()
            self._pending.append(item)
            self._cond.notify()
        if not item.published.wait(self.publish_timeout_s):
            with self._cond:
                if item in self._pending:  # not taken yet: it will never be sent
                    self._pending.remove(item)
                    raise NotSentError("the classify message was not published in time")
            # NOTE: taken and being written: it may reach Redis yet (once a stall ends).
            raise redis.TimeoutError("the classify message may not have been published")
        if item.error is not None:
            raise item.error

    def _take(self) -> list[_Pending]:
        with self._cond:
            self._cond.wait_for(lambda: bool(self._pending))
            deadline = time.monotonic() + self.linger_s
            while len(self._pending) < self.max_requests:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            group = self._pending[: self.max_requests]
            del self._pending[: self.max_requests]
            return group

    def _run(self) -> None:
        while True:
            group = self._take()
            try:
                message = task_message([item.request for item in group])
                marks = [abandoned_key(i.request["request_id"]) for i in group if i.retry]
                if marks:
                    pipe = self._client().pipeline(transaction=True)
                    pipe.delete(*marks)
                    pipe.lpush(self.queue, message)
                    pipe.execute()
                else:
                    self._client().lpush(self.queue, message)
                self.messages += 1
                self.requests += len(group)
            except BaseException as exc:  # each waiting request hears about it
                for item in group:
                    item.error = exc
            for item in group:
                item.published.set()


_publishers: dict[int, Publisher] = {}
_publishers_lock = threading.Lock()


def _publisher() -> Publisher:
    """This process's publisher (a forked process builds its own: threads do not survive a
    fork)."""
    pid = os.getpid()
    with _publishers_lock:
        publisher = _publishers.get(pid)
        if publisher is None:
            publisher = _publishers[pid] = Publisher(
                linger_s=settings.INFERENCE_COALESCE_MS / 1000,
                max_requests=settings.INFERENCE_COALESCE_MAX,
            )
        return publisher


def overloaded(message: str, code: str) -> Overloaded:
    """A 503 the client may retry after a second."""
    return Overloaded(message, code=code, headers={"Retry-After": "1"})


def earlier_answer(request_id: str) -> ClassifyResult | None:
    """For a retry under the same Idempotency-Key: the answer a worker gave an earlier
    attempt after all (before the API gave up on it), already metered; serve it, never run
    (and bill) the call twice. A 503 when Redis cannot say."""
    try:
        earlier = redis_client().get(result_key(request_id))
    except (redis.RedisError, ConnectionError):
        raise overloaded(messages.BROKER_DOWN, "broker_unavailable") from None
    return None if earlier is None else cast(ClassifyResult, json.loads(cast(bytes, earlier)))


def classify_dispatch(request: ClassifyRequest, *, retry: bool) -> ClassifyResult:
    """The worker's answer. Raises Overloaded (503) when none can be had in time.
    ``retry``: the call retries an earlier attempt under its request id (whose answer, if a
    worker gave one, the caller serves instead: ``earlier_answer``); its message clears that
    attempt's abandoned mark."""
    request_id = request["request_id"]
    client = redis_client()
    try:
        publisher = _publisher()
        # The queue holds messages of one or more requests: shed load by requests waiting.
        if queue_depth(fresh=False) * publisher.requests_per_message >= (
            settings.INFERENCE_MAX_QUEUE_DEPTH
        ):
            raise overloaded(messages.OVERLOADED, "overloaded")
    except (redis.RedisError, ConnectionError):  # nothing was sent
        raise overloaded(messages.BROKER_DOWN, "broker_unavailable") from None
    try:
        # NOTE: a retry's message clears the earlier attempt's abandoned mark in the same
        # transaction: whichever answer comes first is then delivered (and billed, once: the
        # ledger keys usage by the request id they share), this attempt's own included,
        # however fast. A retry refused before it is sent leaves the earlier one abandoned.
        publisher.publish(request, retry=retry)
    except NotSentError:
        raise overloaded(messages.BROKER_DOWN, "broker_unavailable") from None
    except (redis.RedisError, ConnectionError):
        # NOTE: the LPUSH may have reached Redis all the same (a timeout after the write, a
        # stall): a worker may answer and bill it, so it is waited for (and given up on)
        # like one that was sent, never answered with a 503 at once.
        pass
    while True:
        answer = _answer_await(client, request_id, request["deadline"])
        if answer is None:
            timeout = settings.INFERENCE_TIMEOUT_S
            raise overloaded(messages.WORKER_TIMEOUT.format(timeout=timeout), "worker_timeout")
        result = cast(ClassifyResult, json.loads(answer))
        if "error" not in result:
            return result
        if result.get("deadline", request["deadline"]) != request["deadline"]:
            continue  # an earlier attempt's error: this attempt's own answer is on its way
        # NOTE: the call ends in an error for its caller, so nothing may be billed for it
        # from now on (another attempt's answer still on its way, under the same request
        # id): given up on, unless a success was delivered meanwhile, the caller's then.
        other = _give_up_retrying(request_id, hard_stop_of(request["deadline"]))
        return result if other is None else cast(ClassifyResult, json.loads(other))


def hard_stop_of(deadline: float) -> float:
    """When an API that cannot reach Redis answers 503 all the same: after Redis itself stops
    taking answers for the request (deadline + GIVE_UP_GRACE_S, by its clock), with a margin
    for the two machines' clocks."""
    return deadline + GIVE_UP_GRACE_S + GIVE_UP_SKEW_S


def _answer_await(client: redis.Redis, request_id: str, deadline: float) -> bytes | None:
    """The answer, or None once the request is given up on (``give_up``). Redis errors are
    tried again until the hard stop: a worker may be answering, and an answer nobody takes
    must be one nobody is billed for, so the 503 waits for the abandoned mark to be set.
    Past the hard stop, the 503 ``broker_unavailable``: a worker's answer reaching Redis by
    then is dropped unbilled all the same (``workers.replies``)."""
    hard_stop = hard_stop_of(deadline)
    while True:
        try:
            left = deadline - time.time()
            if left <= 0:
                return _give_up_retrying(request_id, hard_stop)
            # NOTE: BLPOP's timeout 0 means "forever": never let it round down to that.
            wait = max(min(left, BLPOP_SLICE_S), 0.01)
            popped = client.blpop([reply_key(request_id)], timeout=wait)
            if popped is not None:
                return cast(bytes, cast(Any, popped)[1])
        except (redis.RedisError, ConnectionError):
            pause_or_stop(hard_stop)


def _give_up_retrying(request_id: str, hard_stop: float) -> bytes | None:
    """``give_up``, tried again on Redis errors until ``hard_stop``, on a client whose short
    socket timeout keeps each try (and so the 503) within that bound during a stall."""
    while True:
        try:
            return give_up(give_up_client(), request_id)
        except (redis.RedisError, ConnectionError):
            pause_or_stop(hard_stop)


def pause_or_stop(hard_stop: float) -> None:
    """Wait a moment before the next try at Redis; past ``hard_stop``, the 503."""
    if time.time() + RETRY_PAUSE_S > hard_stop:
        raise overloaded(messages.BROKER_DOWN, "broker_unavailable") from None
    time.sleep(RETRY_PAUSE_S)


@functools.cache
def give_up_client() -> redis.Redis:
    return redis.Redis.from_url(
        settings.REDIS_URL, socket_timeout=GIVE_UP_SOCKET_TIMEOUT_S, socket_connect_timeout=2
    )


def give_up(client: redis.Redis, request_id: str) -> bytes | None:
    """Stop waiting: mark the request abandoned, together with a last look for its answer.
    An answer delivered before that is the caller's (it was metered with its delivery); a
    worker finishing after it delivers and meters nothing (``workers.replies``), so the
    caller's 503 is not billed. NOTE: the look reads the answer's result key, which the
    worker sets with every delivered success, not the reply list: a BLPOP whose reply was
    lost (the list popped, the reply never read) and a give-up tried again after a lost
    reply both see it there. The list is emptied: an error left in it is nobody's now (a
    retry under the same request id must not take it for its own)."""
    pipe = client.pipeline(transaction=True)
    pipe.get(result_key(request_id))
    pipe.delete(reply_key(request_id))
    pipe.set(abandoned_key(request_id), b"1", ex=ABANDONED_TTL_S)
    answer, _, _ = pipe.execute()
    return cast(bytes | None, answer)
