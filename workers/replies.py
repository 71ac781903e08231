"""Sending a classification's answer back to the API that waits for it (see
``contract.reply_key``), together with its usage event, in one Redis transaction: the
answer is delivered if and only if the call is metered."""

from __future__ import annotations

import functools
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import redis

from workers.contract import (
    ABANDON_CHECK_MARGIN_S,
    REPLY_TTL_S,
    RESULT_TTL_S,
    ClassifyRequest,
    ClassifyResult,
    abandoned_key,
    input_indices,
    reply_key,
    result_cache_key,
    result_key,
)
from workers.settings import get_settings

if TYPE_CHECKING:
    from workers.contract import UsageEvent

logger = logging.getLogger(__name__)

# One answer: the result, its usage event (None for an error), the request it answers (its
# rows go to the result cache; None: no caching).
Reply = tuple["ClassifyResult", "UsageEvent | None", "ClassifyRequest | None"]


@functools.cache
def redis_client() -> redis.Redis:
    return redis.Redis.from_url(get_settings().redis_url, socket_timeout=10)


def reply_send(
    result: ClassifyResult, usage: UsageEvent | None = None, request: ClassifyRequest | None = None
) -> None:
    replies_send([(result, usage, request)])


def replies_send(replies: list[Reply]) -> None:
    """Deliver answers and stage their usage events in one transaction: each answer is
    delivered if and only if its call is metered. An answer its caller gave up on
    (``contract.abandoned_key``) is neither: only its rows go to the result cache."""
    if not replies:
        return
    now = time.time()
    late = {
        request["request_id"]
        for _, usage, request in replies
        if usage is not None
        and request is not None
        and now > request["deadline"] - ABANDON_CHECK_MARGIN_S
    }
    if not late:
        pipe = redis_client().pipeline(transaction=True)
        _stage(pipe, replies, abandoned=set())
        pipe.execute()
        return
    # NOTE: WATCH, so that an API giving up between our read of the marks and our commit
    # fails the commit (and we read again) rather than having its 503 billed.
    watched = [abandoned_key(request_id) for request_id in sorted(late)]
    with redis_client().pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(*watched)
                marks = pipe.mget(watched)
                abandoned = {
                    request_id
                    for request_id, mark in zip(sorted(late), marks, strict=True)
                    if mark is not None
                }
                pipe.multi()
                _stage(pipe, replies, abandoned=abandoned)
                pipe.execute()
            except redis.WatchError:
                continue
            break
    for request_id in sorted(abandoned):
        logger.info("%s: answered after its caller gave up: not delivered, not billed", request_id)


def _stage(pipe: Any, replies: list[Reply], *, abandoned: set[str]) -> None:
    from workers.usage import usage_stage  # usage imports this module

    for result, usage, request in replies:
        request_id = result["request_id"]
        body = json.dumps(result, separators=(",", ":"))
        if request_id not in abandoned:
            if usage is not None:
                usage_stage(pipe, usage)
            pipe.rpush(reply_key(request_id), body)
            pipe.expire(reply_key(request_id), REPLY_TTL_S)
        if "error" not in result:
            keep = request is None or request.get("keep_result", True)
            if keep and request_id not in abandoned:
                pipe.set(result_key(request_id), body, ex=RESULT_TTL_S)
            if request is not None and request.get("cache_version"):
                _cache_rows(pipe, request, result)


def _cache_rows(pipe: Any, request: ClassifyRequest, result: ClassifyResult) -> None:
    """Each input's row the worker computed, for the API's result cache (with the tokens it
    took, so a hit can be metered like the call it replaces); rows that came from the cache
    (a partial hit) are left as they are."""
    version = str(request["cache_version"])
    ttl = int(request.get("cache_ttl_s") or 86_400)
    tokens = result.get("row_tokens") or []
    texts = dict(zip(input_indices(request), request["inputs"], strict=True))
    for row in result["results"]:
        text = texts.get(row["index"])
        if text is None:
            continue
        key = result_cache_key(version, request["labels"], request["examples"], text)
        cached = {**row, "tokens": tokens[row["index"]] if tokens else 0}
        pipe.set(key, json.dumps(cached, separators=(",", ":")), ex=ttl)
