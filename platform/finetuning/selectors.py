from __future__ import annotations

from typing import Any

from core.errors import NotFound
from core.scoping import TenantScopedQuerySet
from tenants.models import Tenant

from . import messages
from .models import FineTuneEvent, FineTuneJob


def fine_tune_list(*, tenant: Tenant, livemode: bool) -> TenantScopedQuerySet:
    """The tenant's jobs of one mode: a test-mode key's jobs are test-mode jobs."""
    return FineTuneJob.objects.for_tenant(tenant).filter(livemode=livemode)


def fine_tune_get(
    *,
    tenant: Tenant,
    job_id: str,
    livemode: bool,
    param: str | None = None,
    for_update: bool = False,
) -> FineTuneJob:
    """The tenant's job of that mode, or 404 (also for another tenant's id)."""
    queryset = fine_tune_list(tenant=tenant, livemode=livemode).filter(pk=job_id)
    if for_update:
        queryset = queryset.select_for_update()
    job = queryset.first()
    if job is None:
        raise NotFound(messages.JOB_NOT_FOUND.format(id=job_id), code="job_not_found", param=param)
    return job


def fine_tune_events(*, job: FineTuneJob) -> TenantScopedQuerySet:
    return FineTuneEvent.objects.for_tenant(job.tenant_id).filter(job=job)


def fine_tune_to_dict(job: FineTuneJob) -> dict[str, Any]:
    return {
        "id": job.id,
        "object": "fine_tune",
        "status": job.status,
        "base_model": job.base_model,
        "method": job.method,
        "training_dataset": job.training_dataset_id,
        "validation_dataset": job.validation_dataset_id,
        "hyperparameters": job.hyperparameters,
        "suffix": job.suffix or None,
        "seed": job.seed,
        "fine_tuned_model": job.fine_tuned_model or None,
        "trained_tokens": job.trained_tokens,
        "metrics": job.metrics,
        "error": job.error,
        "attempt": job.attempt,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


def fine_tune_event_to_dict(event: FineTuneEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "object": "fine_tune.event",
        "created_at": event.created_at,
        "level": event.level,
        "type": event.type,
        "message": event.message,
        "data": event.data,
    }
