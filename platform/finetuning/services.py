"""Writing fine-tuning jobs: create and cancel (what a worker reports is applied in
``events.py``).

State machine: validating_files -> queued -> running -> succeeded | failed | cancelled.
Only this app's services move a job between states; the worker only reports (job events).
"""

from __future__ import annotations

import logging
import re
import unicodedata
from typing import Any

import redis
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apikeys.messages import TENANT_SUSPENDED
from apikeys.models import ApiKey
from core.artifacts import artifact_store
from core.errors import APIError, Conflict, InvalidRequest, PermissionError_
from datasets.models import Dataset
from datasets.selectors import dataset_get
from inference.models import AIModel
from inference.selectors import model_get_visible
from limits.services import enforcement_for
from tenants.models import Tenant
from tenants.selectors import tenant_with_plan
from workers.contract import HYPERPARAMETER_DEFAULTS, cancel_key

from . import messages
from .budget import check_test_mode_jobs, check_token_budget
from .dispatch import (
    KEY_TTL_S,
    _redis,
    check_queue,
    fine_tunes_dispatch,
    fine_tunes_dispatch_on_commit,
    job_ended,
    job_log,
)
from .models import FineTuneJob
from .selectors import fine_tune_get

logger = logging.getLogger(__name__)
Status = FineTuneJob.Status


def fine_tune_create(
    *,
    tenant: Tenant,
    api_key: ApiKey,
    base_model: str,
    training_dataset_id: str,
    validation_dataset_id: str | None,
    method: str,
    hyperparameters: dict[str, Any],
    suffix: str,
    seed: int,
) -> FineTuneJob:
    model = model_get_visible(
        tenant=tenant, model_id=base_model, livemode=api_key.livemode, param="base_model"
    )
    if model.kind != AIModel.Kind.BASE:
        raise InvalidRequest(
            messages.NOT_A_BASE_MODEL.format(model=base_model),
            code="invalid_base_model",
            param="base_model",
        )
    training = _usable(tenant, training_dataset_id, "training_dataset")
    validation = None
    if validation_dataset_id:
        validation = _usable(tenant, validation_dataset_id, "validation_dataset")
        _check_validation_labels(training.labels, validation.labels)
    resolved = {**HYPERPARAMETER_DEFAULTS[method], **hyperparameters}
    check_token_budget(
        training=training,
        held_out=validation is None,
        epochs=int(resolved["epochs"]),
        livemode=api_key.livemode,
    )
    check_queue()
    with transaction.atomic():
        # WARNING: the plan's model count and the insert of the job that it admits must be
        # atomic, or parallel requests all pass the count (finding: 13 models on a 10-model
        # plan). The tenant's row is locked first, before anything else this transaction
        # locks (the datasets below), so two creates of one tenant queue here and the second
        # counts the first's job. FOR NO KEY UPDATE: rows that merely reference the tenant
        # (the ledger, keys) are still inserted meanwhile. SQLite ignores FOR UPDATE; its
        # IMMEDIATE transactions (settings) serialise writers the same way.
        status = (
            Tenant.objects.select_for_update(no_key=True)
            .filter(pk=tenant.pk)
            .values_list("status", flat=True)
            .first()
        )
        # NOTE: read under the lock a suspension takes too: one committed while this request
        # waited (its key was checked before) would otherwise miss this job, and it would
        # run and be billed (fine_tunes_stop_for_suspension).
        if status == Tenant.Status.SUSPENDED:
            raise PermissionError_(TENANT_SUSPENDED, code="tenant_suspended")
        # After the 400s/404s above: only a valid job is a 402.
        plan_id = _check_plan(tenant=tenant, api_key=api_key, method=method)
        if not api_key.livemode:
            check_test_mode_jobs(tenant_id=tenant.pk)
        # The files' rows locked, as a delete locks them: a delete that ran first makes this
        # a 404; one that runs after sees this job (409 dataset_in_use). In id order, so that
        # two jobs on the same two datasets the other way round cannot deadlock.
        files = {training.pk: "training_dataset"}
        if validation is not None:
            files.setdefault(validation.pk, "validation_dataset")
        for dataset_id in sorted(files):
            dataset_get(tenant=tenant, dataset_id=dataset_id, param=files[dataset_id],
                        for_update=True)  # fmt: skip
        job = FineTuneJob.objects.create(
            tenant=tenant,
            api_key_id=api_key.pk,
            livemode=api_key.livemode,
            base_model=model.base_model,
            method=method,
            training_dataset=training,
            validation_dataset=validation,
            training_file=training.content_file,
            validation_file=validation.content_file if validation else "",
            hyperparameters=resolved,
            suffix=suffix,
            seed=seed,
            plan_id=plan_id,
            status=Status.VALIDATING_FILES,
        )
        job_log(job, messages.EV_CREATED)
        # The files were validated at upload; what is left to check is that their bytes are
        # still in the artifact store the workers read.
        store = artifact_store()
        if not all(store.exists(h) for h in (job.training_file, job.validation_file) if h):
            job.status, job.finished_at = Status.FAILED, timezone.now()
            job.error = {"code": "file_missing", "message": "A dataset file is missing."}
            job.save(update_fields=["status", "finished_at", "error"])
            job_ended(job, job.error["message"])
            return job
        job.status = Status.QUEUED
        job.save(update_fields=["status"])
        job_log(job, messages.EV_VALIDATED.format(rows=training.rows, labels=len(training.labels)))
        for warning in _validation_warnings(training, validation):
            job_log(job, warning, level="warning")
        # The tenant's row is still locked: its slots are counted with this job among them.
        if job.pk not in fine_tunes_dispatch(tenant_id=tenant.pk, created=job.pk):
            limit = settings.FINETUNE_DISPATCHED_PER_TENANT
            job_log(job, messages.EV_WAITING.format(limit=limit))
    return job


def _validation_warnings(training: Dataset, validation: Dataset | None) -> list[str]:
    """What makes a job's validation metrics mean less than they seem (the job still runs)."""
    if validation is None:
        return []
    if validation.content_file == training.content_file:
        return [messages.WARN_VALIDATION_IS_TRAINING]
    missing = sorted(set(training.labels) - set(validation.labels))
    if missing:
        return [messages.WARN_VALIDATION_MISSES.format(labels=", ".join(map(repr, missing)))]
    return []


def _check_plan(*, tenant: Tenant, api_key: ApiKey, method: str = "head") -> str:
    """What the plan allows, each refusal a 402: an unpaid subscription, a plan without
    fine-tuning, a plan without LoRA for a ``lora`` job; then ``max_fine_tuned_models``,
    which counts the tenant's models and the jobs that may still become one. Returns the
    plan's id: the job is billed on it, whatever plan the tenant is on when it ends.

    WARNING: call it with the tenant's row locked, in the transaction that creates the job
    (``fine_tune_create``): the count is only true until another job is inserted. The plan
    is read afresh too, not this process's copy of it (a move to free answered a moment ago
    in another process must refuse the job)."""
    enforcement = enforcement_for(api_key, tenant=tenant_with_plan(tenant_id=tenant.pk, fresh=True))
    if enforcement.blocked_reason:
        raise APIError(enforcement.blocked_reason, code="subscription_unpaid", status=402)
    plan = enforcement.plan
    # The features GET /v1/plans publishes are the features a plan has.
    if not plan.fine_tuning:
        raise APIError(
            messages.FINE_TUNING_NOT_IN_PLAN.format(plan=plan.name),
            code="fine_tuning_not_in_plan",
            status=402,
        )
    if method == FineTuneJob.Method.LORA and not plan.lora:
        raise APIError(
            messages.LORA_NOT_IN_PLAN.format(plan=plan.name),
            code="lora_not_in_plan",
            param="method",
            status=402,
        )
    limit = plan.max_fine_tuned_models
    # An int8 variant is another way to serve a model the tenant has, not another model.
    # Each mode counts its own: a live key cannot see (or delete) test-mode models.
    models = AIModel.objects.for_tenant(tenant).filter(
        kind=AIModel.Kind.FINE_TUNED,
        deleted_at__isnull=True,
        parent__isnull=True,
        livemode=api_key.livemode,
    )
    pending = (
        FineTuneJob.objects.for_tenant(tenant)
        .filter(livemode=api_key.livemode)
        .exclude(status__in=FineTuneJob.TERMINAL)
    )
    if models.count() + pending.count() >= limit:
        raise APIError(
            messages.MODEL_LIMIT.format(plan=plan.name, limit=limit),
            code="fine_tuned_model_limit",
            status=402,
        )
    return str(plan.pk)


def _check_validation_labels(training: list[str], validation: list[str]) -> None:
    extra = sorted(set(validation) - set(training))
    if not extra:
        return
    message = messages.VALIDATION_LABELS.format(labels=", ".join(map(repr, extra)))
    # NOTE: "é" as one code point and as "e" + a combining accent print the same, so the
    # message would name a label the reader sees in both files: say which it resembles.
    seen = {unicodedata.normalize("NFKC", label).casefold(): label for label in training}
    for label in extra:
        twin = seen.get(unicodedata.normalize("NFKC", label).casefold())
        if twin is not None:
            message += messages.VALIDATION_LABEL_LOOKALIKE.format(
                validation=ascii(label), training=ascii(twin)
            )
    raise InvalidRequest(message, code="validation_labels_mismatch", param="validation_dataset")


def _usable(tenant: Tenant, dataset_id: str, param: str) -> Dataset:
    dataset = dataset_get(tenant=tenant, dataset_id=dataset_id, param=param)
    if dataset.status != Dataset.Status.VALID:
        raise InvalidRequest(
            messages.DATASET_INVALID.format(
                id=dataset.id,
                count=dataset.error_count,
                problems="problem" if dataset.error_count == 1 else "problems",
            ),
            code="dataset_invalid",
            param=param,
        )
    return dataset


@transaction.atomic
def fine_tune_cancel(*, tenant: Tenant, job_id: str, livemode: bool) -> FineTuneJob:
    """A queued job never starts (the worker checks the key before it begins); a running one
    stops at its next step boundary. The job reads ``cancelled`` at once."""
    job = fine_tune_get(
        tenant=tenant, job_id=job_id, livemode=livemode, param="id", for_update=True
    )
    if job.is_terminal:
        raise Conflict(
            messages.NOT_CANCELLABLE.format(status=job.status), code="job_not_cancellable"
        )
    job.status, job.finished_at = Status.CANCELLED, timezone.now()
    job.save(update_fields=["status", "finished_at"])
    job_ended(job, messages.EV_CANCELLED, level="info")
    # After the cancel's own event, so that a running job's "stopped" event, which the
    # worker sends once it sees the key, comes after it (it came ~4 ms before: an audit).
    # Redis failing still undoes the cancel (this transaction).
    _redis().set(cancel_key(job.id), 1, ex=KEY_TTL_S)
    fine_tunes_dispatch_on_commit(tenant_id=tenant.pk)
    return job


def fine_tunes_stop_for_suspension(*, tenant_ids: list[str]) -> int:
    """Stop every unfinished job of these (just suspended) tenants: each reads ``failed``
    with code ``tenant_suspended`` at once and is never billed, as a cancel is: a queued job
    never starts and a running one stops at its next step boundary; a success its worker
    sends anyway finds the job terminal and registers and bills nothing
    (``events.fine_tune_event_apply``). Call it inside the transaction that suspends them.
    Returns how many jobs were stopped."""
    jobs = list(
        FineTuneJob.objects.unscoped()
        .select_for_update()
        .filter(tenant_id__in=tenant_ids)
        .exclude(status__in=FineTuneJob.TERMINAL)
        .order_by("pk")
    )
    now = timezone.now()
    for job in jobs:
        message = messages.TENANT_SUSPENDED.format(status=job.status.replace("_", " "))
        job.status, job.finished_at = Status.FAILED, now
        job.error = {"code": "tenant_suspended", "message": message}
        job.save(update_fields=["status", "finished_at", "error"])
        job_ended(job, message)
    ids = [job.id for job in jobs]

    def tell_workers() -> None:
        # NOTE: after the commit, so that a worker never stops for a suspension that was
        # rolled back. Should Redis be down, the workers train on and their successes are
        # ignored: compute lost, nothing billed.
        try:
            with _redis().pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.set(cancel_key(job_id), 1, ex=KEY_TTL_S)
                pipe.execute()
        except redis.RedisError:
            logger.warning("could not tell workers to stop jobs %s", ids, exc_info=True)

    if ids:
        transaction.on_commit(tell_workers)
    return len(ids)


# At least one letter or digit: "-" alone made ids like ft:minilm-l6:-:<id>. (At most 40
# characters: the serializer's max_length.)
SUFFIX_RE = re.compile(r"[A-Za-z0-9_-]*[A-Za-z0-9][A-Za-z0-9_-]*")
