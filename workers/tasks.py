"""Celery entry points: thin wrappers over the engine, and the metered reply."""

from __future__ import annotations

import logging
import time

from workers import errors
from workers.celery_app import INFERENCE_TASK_POLICY, app
from workers.contract import (
    ClassificationRow,
    ClassifyRequest,
    ClassifyResult,
    TaskName,
    cached_row_split,
    input_indices,
)
from workers.replies import Reply, replies_send, reply_send
from workers.runtime.classifier import get_engine
from workers.usage import usage_event_build

logger = logging.getLogger(__name__)


def _expired(request: ClassifyRequest) -> Reply:
    # The caller has given up: skip the model, and bill nothing.
    return errors.error_result(request, errors.EXPIRED, errors.EXPIRED_MESSAGE), None, request


def _answered(request: ClassifyRequest, result: ClassifyResult) -> Reply:
    # The answer and its usage event go in one transaction: no answered call goes unmetered.
    if "error" in result:
        return result, None, request
    result = merge_cached_rows(request, result)
    return result, usage_event_build(request=request, result=result), request


def merge_cached_rows(request: ClassifyRequest, result: ClassifyResult) -> ClassifyResult:
    """The whole call's answer for a partial cache hit: the rows computed for ``inputs``
    moved to their places, the cached rows in theirs, and usage for every input (the cached
    ones as ``cached``, with the tokens they took and no compute)."""
    cached = request.get("cached_rows")
    if not cached:
        return result
    places = input_indices(request)
    computed_tokens = result.get("row_tokens") or [0] * len(places)
    rows: list[ClassificationRow] = [
        {**row, "index": places[row["index"]]} for row in result["results"]
    ]
    tokens = dict(zip(places, computed_tokens, strict=True))
    hit_tokens = 0
    for entry in cached:
        row, tokens[entry["index"]] = cached_row_split(entry)
        rows.append(row)
        hit_tokens += tokens[entry["index"]]
    rows.sort(key=lambda row: row["index"])
    usage = result["usage"]
    return {
        **result,
        "results": rows,
        "row_tokens": [tokens[index] for index in range(len(rows))],
        "usage": {
            "inputs": usage["inputs"] + len(cached),
            "tokens": usage["tokens"] + hit_tokens,
            "compute_ms": usage["compute_ms"],
            "cached": usage["cached"] + len(cached),
        },
    }


@app.task(name=TaskName.CLASSIFY.value, **INFERENCE_TASK_POLICY)
def classify(request: ClassifyRequest) -> None:
    """Answers on the request's reply list. Returns nothing: Celery spent ~10 % of the
    worker's Python CPU (yappi, 32 clients) on saferepr of a returned result for its log
    line, a result nobody reads."""
    if time.time() > request["deadline"]:
        reply_send(*_expired(request))
        return
    try:
        result = get_engine().classify(request)
    except Exception:
        # Tell the waiting API now rather than letting it wait out its timeout.
        reply_send(
            errors.error_result(request, errors.WORKER_ERROR, errors.WORKER_ERROR_MESSAGE),
            None,
            request,
        )
        raise
    reply_send(*_answered(request, result))


@app.task(name=TaskName.CLASSIFY_BATCH.value, **INFERENCE_TASK_POLICY)
def classify_batch(requests: list[ClassifyRequest]) -> None:
    """The requests one API process had in flight at once, coalesced into one message:
    Celery's per-message work (~1.1 ms of CPU measured with a no-op task) is paid once for
    all of them, and their texts share forward passes. Each request is answered (or
    refused, when past its deadline or failed) on its own reply list as soon as its own
    texts are done; the requests that finish together share one reply transaction."""
    now = time.time()
    live = [request for request in requests if now <= request["deadline"]]
    replies_send([_expired(request) for request in requests if now > request["deadline"]])
    for group in get_engine().classify_as_done(live):
        replies: list[Reply] = []
        for index, result in group:
            request = live[index]
            if not isinstance(result, Exception):
                try:
                    replies.append(_answered(request, result))
                    continue
                except Exception as exc:  # one bad request must not leave others unanswered
                    result = exc
            logger.error("classification %s failed", request.get("request_id"), exc_info=result)
            error = errors.error_result(request, errors.WORKER_ERROR, errors.WORKER_ERROR_MESSAGE)
            replies.append((error, None, request))
        replies_send(replies)
