"""Hands a classification to the workers and waits for the answer, within limits: a full
queue is refused at once (503 ``overloaded``) and a worker that does not answer in time is a
503 ``worker_timeout``, never a hung request."""

from __future__ import annotations

import functools
import time
from typing import cast

import redis
from celery.exceptions import TaskRevokedError
from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import AsyncResult
from django.conf import settings
from kombu.exceptions import OperationalError

from config.celery import app
from core.errors import Overloaded
from workers.contract import ClassifyRequest, ClassifyResult, Queue, TaskName

from . import messages


@functools.cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)


def queue_depth() -> int:
    # NOTE: Celery's Redis transport keeps a queue's default-priority messages in a list named
    # after the queue.
    return int(_redis().llen(Queue.INFERENCE.value))


def classify_dispatch(request: ClassifyRequest, *, reuse_result: bool) -> ClassifyResult:
    """The worker's answer. Raises Overloaded (503) when none can be had in time."""
    timeout = settings.INFERENCE_TIMEOUT_S
    try:
        if reuse_result:
            # A retry under the same Idempotency-Key: a worker may have answered the first
            # attempt after the API gave up. Serve that answer; never run (and bill) it twice.
            earlier: AsyncResult[ClassifyResult] = AsyncResult(request["request_id"], app=app)
            if earlier.state == "SUCCESS":
                return earlier.get(timeout=timeout)
        if queue_depth() >= settings.INFERENCE_MAX_QUEUE_DEPTH:
            raise Overloaded(messages.OVERLOADED, code="overloaded", headers={"Retry-After": "1"})
        async_result = app.send_task(
            TaskName.CLASSIFY.value,
            args=[request],
            queue=Queue.INFERENCE.value,
            task_id=request["request_id"],
            expires=request["deadline"] - time.time(),
        )
        return cast(ClassifyResult, async_result.get(timeout=timeout))
    except (CeleryTimeout, TaskRevokedError):
        # Revoked: the message outlived its deadline in the queue and Celery dropped it
        # unrun (and unbilled). To the client that is the same as a timeout.
        raise Overloaded(
            messages.WORKER_TIMEOUT.format(timeout=timeout),
            code="worker_timeout",
            headers={"Retry-After": "1"},
        ) from None
    except (OperationalError, redis.RedisError, ConnectionError):
        raise Overloaded(
            messages.BROKER_DOWN, code="broker_unavailable", headers={"Retry-After": "1"}
        ) from None
