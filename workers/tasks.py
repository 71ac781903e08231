"""Celery entry points: thin wrappers over the engine and usage reporting."""

from __future__ import annotations

import time

from workers import errors
from workers.celery_app import INFERENCE_TASK_POLICY, app
from workers.contract import ClassifyRequest, ClassifyResult, TaskName
from workers.runtime.classifier import get_engine
from workers.usage import usage_event_build, usage_publish


@app.task(name=TaskName.CLASSIFY.value, **INFERENCE_TASK_POLICY)
def classify(request: ClassifyRequest) -> ClassifyResult:
    if time.time() > request["deadline"]:
        # The caller has given up: skip the model, and bill nothing.
        return errors.error_result(request, errors.EXPIRED, errors.EXPIRED_MESSAGE)
    result = get_engine().classify(request)
    if "error" not in result:
        # Published before the result is returned (and stored): no answered call goes
        # unmetered. If publishing fails the task fails and the client's retry re-runs it.
        usage_publish(app=app, event=usage_event_build(request=request, result=result))
    return result
