"""Sending a classification's answer back to the API that waits for it (see
``contract.reply_key``): one pipelined round trip to Redis."""

from __future__ import annotations

import functools
import json

import redis

from workers.contract import REPLY_TTL_S, RESULT_TTL_S, ClassifyResult, reply_key, result_key
from workers.settings import get_settings


@functools.cache
def _client() -> redis.Redis:
    return redis.Redis.from_url(get_settings().redis_url, socket_timeout=10)


def reply_send(result: ClassifyResult) -> None:
    request_id = result["request_id"]
    body = json.dumps(result, separators=(",", ":"))
    pipe = _client().pipeline(transaction=False)
    pipe.rpush(reply_key(request_id), body)
    pipe.expire(reply_key(request_id), REPLY_TTL_S)
    if "error" not in result:
        pipe.set(result_key(request_id), body, ex=RESULT_TTL_S)
    pipe.execute()
