"""Celery entry points: thin wrappers over the engine, and the metered reply."""

from __future__ import annotations

import time

from workers import errors
from workers.celery_app import INFERENCE_TASK_POLICY, app
from workers.contract import ClassifyRequest, TaskName
from workers.replies import reply_send
from workers.runtime.classifier import get_engine
from workers.usage import usage_event_build


@app.task(name=TaskName.CLASSIFY.value, **INFERENCE_TASK_POLICY)
def classify(request: ClassifyRequest) -> None:
    """Answers on the request's reply list. Returns nothing: Celery spent ~10 % of the
    worker's Python CPU (yappi, 32 clients) on saferepr of a returned result for its log
    line, a result nobody reads."""
    if time.time() > request["deadline"]:
        # The caller has given up: skip the model, and bill nothing.
        reply_send(errors.error_result(request, errors.EXPIRED, errors.EXPIRED_MESSAGE))
        return
    try:
        result = get_engine().classify(request)
    except Exception:
        # Tell the waiting API now rather than letting it wait out its timeout.
        reply_send(errors.error_result(request, errors.WORKER_ERROR, errors.WORKER_ERROR_MESSAGE))
        raise
    # The answer and its usage event in one transaction: no answered call goes unmetered.
    usage = None if "error" in result else usage_event_build(request=request, result=result)
    reply_send(result, usage, request)
