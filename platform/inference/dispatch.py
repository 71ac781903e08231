"""Hands a classification to the workers and waits for the answer, within limits: a full
queue is refused at once (503 ``overloaded``) and a worker that does not answer in time is a
503 ``worker_timeout``, never a hung request."""

from __future__ import annotations

import base64
import functools
import json
import socket
import threading
import time
import uuid
from typing import Any, cast

import redis
from django.conf import settings

from config.celery import app
from core.errors import Overloaded
from workers.contract import ClassifyRequest, ClassifyResult, Queue, TaskName, reply_key, result_key

from . import messages

# The queue's depth is read at most this often per process: a precise figure is not needed
# to shed load, and one Redis round trip per request is.
DEPTH_TTL_S = 0.25
_depth = {"value": 0, "read_at": 0.0}
_depth_lock = threading.Lock()
_ORIGIN = f"api@{socket.gethostname()}"


@functools.cache
def redis_client() -> redis.Redis:
    # NOTE: the socket timeout must outlast the longest BLPOP we issue.
    return redis.Redis.from_url(
        settings.REDIS_URL,
        socket_timeout=settings.INFERENCE_TIMEOUT_S + 10,
        socket_connect_timeout=5,
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


def task_message(request: ClassifyRequest) -> bytes:
    """The message ``app.send_task(TaskName.CLASSIFY, args=[request], queue=inference,
    task_id=request_id, expires=…)`` would put on the inference queue, for one LPUSH.

    NOTE: measured, send_task cost ~0.8 ms of CPU a request (routing, signals, kombu's
    producer pool and publish machinery) against ~0.06 ms for the LPUSH itself, out of ~5 ms
    for a whole request. Celery still builds the task message (``as_task_v2``: protocol 2
    headers, properties and body); only kombu's Redis-transport envelope is written here,
    as ``kombu.transport.virtual.Channel.basic_publish`` writes it for the default
    (anonymous) exchange: base64 body, delivery info and tag. The test
    tests/platform/test_dispatch.py checks it against what send_task publishes, and every
    end-to-end test has a real Celery worker consume it."""
    request_id = request["request_id"]
    expires_s = max(request["deadline"] - time.time(), 0.0)
    # NOTE: Celery would otherwise put a repr of the arguments (customers' texts) in the
    # message headers; worker logs have no use for them.
    reprs = {"argsrepr": f"<classify {request_id}>", "kwargsrepr": "{}"}
    headers, properties, body, _ = app.amqp.as_task_v2(
        request_id,
        TaskName.CLASSIFY.value,
        args=(request,),
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


def _overloaded(message: str, code: str) -> Overloaded:
    return Overloaded(message, code=code, headers={"Retry-After": "1"})


def classify_dispatch(request: ClassifyRequest, *, reuse_result: bool) -> ClassifyResult:
    """The worker's answer. Raises Overloaded (503) when none can be had in time."""
    request_id = request["request_id"]
    client = redis_client()
    try:
        if reuse_result:
            # A retry under the same Idempotency-Key: a worker may have answered the first
            # attempt after the API gave up. Serve that answer; never run (and bill) it twice.
            earlier = client.get(result_key(request_id))
            if earlier is not None:
                return cast(ClassifyResult, json.loads(cast(bytes, earlier)))
        if queue_depth(fresh=False) >= settings.INFERENCE_MAX_QUEUE_DEPTH:
            raise _overloaded(messages.OVERLOADED, "overloaded")
        client.lpush(Queue.INFERENCE.value, task_message(request))
        # NOTE: BLPOP's timeout 0 means "forever": never let it round down to that.
        wait = max(request["deadline"] - time.time(), 0.01)
        popped = client.blpop([reply_key(request_id)], timeout=wait)
    except (redis.RedisError, ConnectionError):
        raise _overloaded(messages.BROKER_DOWN, "broker_unavailable") from None
    if popped is None:
        timeout = settings.INFERENCE_TIMEOUT_S
        raise _overloaded(messages.WORKER_TIMEOUT.format(timeout=timeout), "worker_timeout")
    return cast(ClassifyResult, json.loads(cast(Any, popped)[1]))
