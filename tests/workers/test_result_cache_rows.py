"""The rows a worker's answers leave in the result cache: the first answer for an input is
the one kept, so a repeat of a request is answered with what that request got (an int8 row
moves with the batch it rides in; overwritten, a repeat read another request's answer)."""

from __future__ import annotations

import json
import os

import redis

from tests.workers.helpers import make_request
from workers.contract import result_cache_keys
from workers.replies import replies_send


def _answer(request, score: float):
    return {
        "request_id": request["request_id"],
        "model": request["model"],
        "results": [
            {"index": 0, "label": "a", "score": score, "scores": {"a": score, "b": 1 - score}}
        ],
        "usage": {"inputs": 1, "tokens": 4, "compute_ms": 2.5, "cached": 0},
        "row_tokens": [4],
    }


def test_the_first_answer_for_an_input_is_the_cached_one() -> None:
    version = f"minilm-l6-int8@test~{os.getpid()}"
    first, second = (
        make_request(["same text"], labels=["a", "b"], cache_version=version, cache_ttl_s=60)
        for _ in range(2)
    )
    replies_send([(_answer(first, 0.61), None, first)])
    replies_send([(_answer(second, 0.69), None, second)])  # another batch, another score
    (key,) = result_cache_keys(version, ["a", "b"], None, ["same text"])
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    try:
        assert json.loads(client.get(key))["score"] == 0.61
        assert 0 < client.ttl(key) <= 60
    finally:
        client.delete(key)
