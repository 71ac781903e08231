from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apikeys.models import ApiKey
from core.artifacts import blob_release
from core.errors import InvalidRequest, NotFound, Overloaded, PermissionError_
from finetuning.models import FineTuneJob
from limits.services import Admission
from tenants.models import Tenant
from workers.contract import CONTRACT_VERSION, ClassifyRequest, ClassifyResult, Example
from workers.errors import DUPLICATE_LABEL, EXPIRED, INVALID_REQUEST, MODEL_UNAVAILABLE

from . import messages
from .cache import cache_lookup, cache_version, cached_answer, with_cached_rows
from .dispatch import classify_dispatch, earlier_answer
from .models import AIModel
from .selectors import model_get_visible


def classify_model_check(
    *,
    tenant: Tenant,
    api_key: ApiKey,
    model_id: str,
    labels: list[str] | None,
    examples: list[Example] | None,
) -> AIModel:
    """The model a classification names, if the key may run it with what the request
    gives it (labels or examples for a base model, neither for a fine-tuned one)."""
    model = model_get_visible(
        tenant=tenant, model_id=model_id, livemode=api_key.livemode, param="model"
    )
    if model.status != AIModel.Status.READY:
        # Switched off by the operator (maintenance): a retry after a minute, as the other
        # 503s that wait on the operator (it had no Retry-After: an audit).
        raise Overloaded(
            messages.MODEL_NOT_READY.format(model=model.id),
            code="model_not_ready",
            headers={"Retry-After": "60"},
        )
    if model.needs_labels and not labels and not examples:
        raise InvalidRequest(
            messages.NEEDS_LABELS.format(model=model.id), code="missing_labels", param="labels"
        )
    if not model.needs_labels:
        for param, value in (("labels", labels), ("examples", examples)):
            if value:
                raise InvalidRequest(
                    messages.FINE_TUNED_NO_LABELS.format(param=param, model=model.id),
                    code="invalid_parameter",
                    param=param,
                )
    return model


def classify(
    *,
    tenant: Tenant,
    api_key: ApiKey,
    request_id: str,
    model_id: str,
    inputs: list[str],
    labels: list[str] | None,
    examples: list[Example] | None,
    is_retry: bool,
    retriable: bool = True,
    timings: dict[str, float] | None = None,
    admission: Admission | None = None,
) -> dict[str, Any]:
    """Classify, from the result cache or through a worker; ``timings['worker']`` gets the
    ms spent waiting for one. ``retriable``: the call may be retried under its request id
    (it carries an Idempotency-Key), so a worker keeps its answer for that retry.
    ``admission`` is the request's: its prefetched cache rows are used, and an answer from
    the cache settles it with the usage event."""
    model = classify_model_check(
        tenant=tenant, api_key=api_key, model_id=model_id, labels=labels, examples=examples
    )
    payload: ClassifyRequest = {
        "v": CONTRACT_VERSION,
        "request_id": request_id,
        "tenant_id": tenant.pk,
        "api_key_id": api_key.pk,
        "livemode": api_key.livemode,
        "model": model.id,
        "base_model": model.base_model,
        "inputs": inputs,
        "labels": labels or None,
        "examples": [{"text": e["text"], "label": e["label"]} for e in examples or []] or None,
        "deadline": time.time() + settings.INFERENCE_TIMEOUT_S,
        "artifact": model.artifact or None,
        "cache_version": cache_version(model, tenant.pk, api_key.livemode),
        "cache_ttl_s": settings.RESULT_CACHE_TTL_S,
        "keep_result": retriable,
    }
    if admission is not None and admission.plan_id:
        payload["plan_id"] = admission.plan_id
    if admission is not None and admission.admitted_at:
        payload["admitted_at"] = admission.admitted_at
    # A retry may have been answered (and metered) by a worker already: that answer, else
    # the cache as for any call. NOTE: once the earlier attempt was given up on, no worker
    # can deliver (or bill) its answer (``dispatch.give_up``); before (its API died), a
    # late answer and this one share the request id, one ledger row. A retry skipped the
    # cache: inputs answered before were run and billed again (an audit).
    result = earlier_answer(request_id) if is_retry else None
    prefetched = admission.prefetched if admission is not None else None
    found = None if result is not None else cache_lookup(payload, prefetched)
    if found is not None:
        hits = [row for row in found if row is not None]
        if len(hits) == len(found):
            result = cached_answer(payload, hits, admission)
        elif hits:  # a worker computes only the misses, and meters the whole call
            payload = with_cached_rows(payload, found)
    if result is None:
        started = time.perf_counter()
        result = classify_dispatch(payload, retry=is_retry)
        if timings is not None:
            timings["worker"] = (time.perf_counter() - started) * 1000
    return _response(result, request_id=request_id, model=model)


def _deleted(model: AIModel) -> bool:
    return not AIModel.objects.unscoped().filter(pk=model.pk, deleted_at__isnull=True).exists()


def _response(result: ClassifyResult, *, request_id: str, model: AIModel) -> dict[str, Any]:
    error = result.get("error")
    if error is not None and error.get("code") == DUPLICATE_LABEL:
        # Labels the tokenizer reads as one (the serializer refuses those it can tell).
        raise InvalidRequest(
            error["message"], code=DUPLICATE_LABEL, param=error.get("param") or "labels"
        )
    if error is not None and error.get("code") == INVALID_REQUEST:
        # A rule the worker holds that the API let through: the caller's to fix, not to
        # retry (it read as a 503 "retry after a short wait" that failed every retry).
        raise InvalidRequest(error["message"], code="invalid_parameter", param=error.get("param"))
    if error is not None and error.get("code") == EXPIRED:
        # Taken by a worker past its deadline: the caller's worker timeout, as when no worker
        # answers at all (it read "The inference worker failed", code "expired").
        timeout = settings.INFERENCE_TIMEOUT_S
        raise Overloaded(messages.WORKER_TIMEOUT.format(timeout=timeout), code="worker_timeout",
                         headers={"Retry-After": "1"})  # fmt: skip
    if error is not None and error.get("code") == MODEL_UNAVAILABLE and _deleted(model):
        # Deleted while the call was on its way: what any call to it says from now on, not
        # a worker failure to retry.
        raise NotFound(messages.MODEL_NOT_FOUND.format(model=model.id), code="model_not_found",
                       param="model")  # fmt: skip
    if error is not None:
        # A worker that cannot serve the model, or that failed on the request.
        raise Overloaded(messages.WORKER_FAILED, code=error["code"], headers={"Retry-After": "1"})
    return {
        "id": request_id,
        "object": "classification",
        "created": int(time.time()),
        "model": model.id,
        "results": result["results"],
        "usage": result["usage"],
    }


@transaction.atomic
def model_delete(*, tenant: Tenant, model_id: str, livemode: bool) -> AIModel:
    model = model_get_visible(tenant=tenant, model_id=model_id, livemode=livemode, param="id")
    if model.tenant_id is None:
        raise PermissionError_(
            messages.BASE_MODEL_NOT_DELETABLE.format(model=model.id),
            code="base_model_not_deletable",
        )
    model.deleted_at = timezone.now()
    # Only if no other delete got there first (they answered 200 each, racing): that one's
    # 200, this one's 404, as one after the other.
    alive = AIModel.objects.for_tenant(tenant).filter(pk=model.pk, deleted_at__isnull=True)
    if not alive.update(deleted_at=model.deleted_at):
        raise NotFound(
            messages.MODEL_NOT_FOUND.format(model=model_id), code="model_not_found", param="id"
        )
    # Its int8 variant serves the same model file: it goes with it (deleting only the
    # variant leaves the model).
    variants = AIModel.objects.for_tenant(tenant).filter(parent=model, deleted_at__isnull=True)
    gone = [model.pk, *variants.values_list("pk", flat=True)]
    variants.update(deleted_at=model.deleted_at)
    # robust: the delete has committed (see datasets.services.dataset_delete).
    transaction.on_commit(lambda: model_files_sweep(model_ids=gone), robust=True)
    return model


def model_files_sweep(model_ids: list[str] | None = None) -> int:
    """The files of deleted fine-tuned models leave the artifact store once no model that
    is not deleted (of any tenant: blobs are content-addressed, and a retrain with the same
    data and seed makes the same file) serves them, and none was stored again within the
    grace period; a deleted model's weights stayed on disk for good. Run after each delete
    (for ``model_ids``) and by the platform worker's beat (for every deleted model whose
    file is still to go); returns how many models' files were released."""
    pending = AIModel.objects.unscoped().filter(
        deleted_at__isnull=False, files_released_at__isnull=True
    )
    if model_ids is not None:
        pending = pending.filter(pk__in=model_ids)
    live = AIModel.objects.unscoped().filter(deleted_at__isnull=True)
    released = 0
    rows = pending.values_list("pk", "parent_id", "artifact")
    for model_id, parent_id, digest in rows.iterator():
        orphan = bool(digest) and not live.filter(artifact=digest).exists()
        if orphan and (_retrain_unfinished(parent_id or model_id) or not blob_release(digest)):
            continue  # the file may be wanted again soon: the next sweep
        AIModel.objects.unscoped().filter(pk=model_id).update(files_released_at=timezone.now())
        released += 1
    return released


def _retrain_unfinished(model_id: str) -> bool:
    """Whether a job not yet finished trains on the data that made ``model_id``: the same
    data, method and seed make the same file, which that job's success (applied whenever the
    job-events consumer gets to it, maybe past the grace period) will register."""
    jobs = FineTuneJob.objects.unscoped()
    made_from = jobs.filter(fine_tuned_model=model_id).values_list("training_file", flat=True)
    training_file = made_from.first()
    if not training_file:
        return False
    return (
        jobs.filter(training_file=training_file).exclude(status__in=FineTuneJob.TERMINAL).exists()
    )
