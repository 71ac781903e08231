"""Sending a classification's answer back to the API that waits for it (see
``contract.reply_key``), together with its usage event, in one Redis script: the answer is
delivered if and only if the call is metered, and neither happens for a call its API has
given up on."""

from __future__ import annotations

import functools
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import redis

from workers.contract import (
    GIVE_UP_GRACE_S,
    REPLY_TTL_S,
    RESULT_TTL_S,
    USAGE_STREAM,
    ClassifyRequest,
    ClassifyResult,
    abandoned_key,
    input_indices,
    reply_key,
    result_cache_keys,
    result_key,
)
from workers.settings import get_settings

if TYPE_CHECKING:
    from workers.contract import UsageEvent

logger = logging.getLogger(__name__)

# One answer: the result, its usage event (None for an error), the request it answers (its
# rows go to the result cache; None: no caching).
Reply = tuple["ClassifyResult", "UsageEvent | None", "ClassifyRequest | None"]

# Per answer, KEYS: its reply list, its abandoned mark, its result; the usage stream last.
# ARGV: the grace and the two TTLs, then per answer: its body, its usage event ("" for an
# error, never metered), its deadline, and how long its result key keeps it: "1"
# RESULT_TTL_S (a call a retry may ask for again), "0" REPLY_TTL_S or until 30 s past the
# deadline + grace if later (its API's last look may come that late), "" not at all (an
# error: a retry runs again).
# An answer is dropped when its API has marked it abandoned, or when Redis runs this past its
# deadline + GIVE_UP_GRACE_S (nobody can be waiting): a success so that the 503 its caller
# got is not billed, an error so that a retry of the call never takes it for its own.
# NOTE: decided here, by Redis, when the writes happen, not by the worker beforehand: a
# worker's transaction that reached Redis just before a stall runs after it, when its API
# may long have answered 503. Every delivered answer is also SET under its result key: the
# API's last look (``give_up``) reads it there, and so sees an answer whose BLPOP reply it
# lost (the list was popped, the reply never arrived). Returns the dropped answers' indices
# (0-based).
DELIVER = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local grace, reply_ttl, result_ttl = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local stream = KEYS[#KEYS]
local dropped = {}
for i = 0, (#KEYS - 1) / 3 - 1 do
  local body, usage = ARGV[4 + 4 * i], ARGV[5 + 4 * i]
  local deadline, keep = tonumber(ARGV[6 + 4 * i]), ARGV[7 + 4 * i]
  if now > deadline + grace or redis.call('EXISTS', KEYS[2 + 3 * i]) == 1 then
    dropped[#dropped + 1] = i
  else
    if usage ~= '' then redis.call('XADD', stream, '*', 'event', usage) end
    redis.call('RPUSH', KEYS[1 + 3 * i], body)
    redis.call('EXPIRE', KEYS[1 + 3 * i], reply_ttl)
    if keep == '1' then
      redis.call('SET', KEYS[3 + 3 * i], body, 'EX', result_ttl)
    elseif keep == '0' then
      -- until its API can no longer be giving up on it (the hard stop, with room to spare)
      local ttl = math.max(tonumber(reply_ttl), math.ceil(deadline + grace + 30 - now))
      redis.call('SET', KEYS[3 + 3 * i], body, 'EX', ttl)
    end
  end
end
return dropped
"""


@functools.cache
def redis_client() -> redis.Redis:
    return redis.Redis.from_url(get_settings().redis_url, socket_timeout=10)


@functools.cache
def _deliver() -> Any:
    return redis_client().register_script(DELIVER)  # for its .sha


def reply_send(
    result: ClassifyResult, usage: UsageEvent | None = None, request: ClassifyRequest | None = None
) -> None:
    replies_send([(result, usage, request)])


def replies_send(replies: list[Reply]) -> None:
    """Deliver answers and stage their usage events, atomically: each answer is delivered if
    and only if its call is metered. An answer its caller gave up on (``DELIVER``) is
    neither: only its rows go to the result cache."""
    if not replies:
        return
    from workers.usage import usage_event_json  # usage imports this module

    keys: list[str] = []
    args: list[Any] = [GIVE_UP_GRACE_S, REPLY_TTL_S, RESULT_TTL_S]
    for result, usage, request in replies:
        request_id = result["request_id"]
        body = json.dumps(result, separators=(",", ":"))
        if "error" in result:
            keep = ""  # never kept: a retry of the call runs again
        elif request is None or request.get("keep_result", True):
            keep = "1"
        else:
            keep = "0"
        keys += [reply_key(request_id), abandoned_key(request_id), result_key(request_id)]
        args += [
            body,
            usage_event_json(usage) if usage is not None else "",
            request["deadline"] if request is not None else time.time(),
            keep,
        ]
    keys.append(USAGE_STREAM)
    # Past this (the worker's clock), Redis would drop every one of them: nobody waits.
    give_up_at = max(float(deadline) for deadline in args[5::4]) + GIVE_UP_GRACE_S + 1
    dropped = _delivered(keys, args, replies, give_up_at)
    for index in dropped:
        logger.info(
            "%s: answered after its caller gave up: not delivered, not billed",
            replies[int(index)][0]["request_id"],
        )


def _delivered(keys: list[str], args: list[Any], replies: list[Reply], give_up_at: float) -> Any:
    """Run ``DELIVER`` (with the result cache's rows) until Redis takes it; the indices of
    the answers it dropped.

    NOTE: the result cache's rows go in the same round trip, whatever the script decides:
    an answer nobody took still saves the next identical request a forward pass. EVALSHA by
    hand: a pipeline running a registered script first asks Redis whether it has it, a
    round trip per batch; a Redis that lost it (restarted) says so, and the batch is sent
    again once the script is loaded. A Redis that cannot be reached (restarting, failing
    over, loading its data) is tried again, with a backoff, until the answers' deadlines
    and grace have passed (the API waits that long for them, and Redis decides by its own
    clock whether they still count): redis-py's own retry gave up in milliseconds, and the
    batch's answers, computed, were lost behind a 503 each (an audit restarted Redis under
    load). A try that failed after Redis ran it is harmless again: the usage event's id is
    stored once in the ledger, a second reply expires unread, the result key is written
    again and the result cache keeps its first rows (SET NX)."""
    script = _deliver()
    pause, reloads = 0.05, 0
    while True:
        pipe = redis_client().pipeline(transaction=False)
        pipe.evalsha(script.sha, len(keys), *keys, *args)
        for result, _, request in replies:
            if "error" not in result and request is not None and request.get("cache_version"):
                _cache_rows(pipe, request, result)
        try:
            try:
                return pipe.execute()[0]
            except redis.exceptions.NoScriptError:
                reloads += 1
                if reloads > 3:  # (loaded, and still unknown: not a restart; say so)
                    raise
                redis_client().script_load(DELIVER)
                continue
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            if time.time() > give_up_at:
                raise
            logger.warning(
                "Redis unreachable answering %d call(s), trying again: %r", len(replies), exc
            )
            time.sleep(pause)
            pause = min(pause * 2, 1.0)


def _cache_rows(pipe: Any, request: ClassifyRequest, result: ClassifyResult) -> None:
    """Each input's row the worker computed, for the API's result cache (with the tokens it
    took, so a hit can be metered like the call it replaces); rows that came from the cache
    (a partial hit) are left as they are."""
    version = str(request["cache_version"])
    ttl = int(request.get("cache_ttl_s") or 86_400)
    tokens = result.get("row_tokens") or []
    keys = result_cache_keys(version, request["labels"], request["examples"], request["inputs"])
    key_at = dict(zip(input_indices(request), keys, strict=True))
    for row in result["results"]:
        key = key_at.get(row["index"])
        if key is None:
            continue
        cached = {**row, "tokens": tokens[row["index"]] if tokens else 0}
        # (nx: the first answer stays. Overwritten, a repeat of a request was answered from
        # the cache with another request's answer: an int8 row moves with its batch, up to
        # ~0.15 in score, and a request that had just been answered saw other scores.)
        pipe.set(key, json.dumps(cached, separators=(",", ":")), ex=ttl, nx=True)
