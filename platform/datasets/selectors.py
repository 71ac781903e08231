from __future__ import annotations

from typing import Any

from django.db.models import Q

from core.errors import NotFound
from core.scoping import TenantScopedQuerySet
from finetuning.models import FineTuneJob
from tenants.models import Tenant

from . import messages
from .models import Dataset


def dataset_list(*, tenant: Tenant, deleted: bool = False) -> TenantScopedQuerySet:
    """The tenant's datasets; deleted ones too with ``deleted`` (a list's cursors)."""
    datasets = Dataset.objects.for_tenant(tenant)
    return datasets if deleted else datasets.filter(deleted_at__isnull=True)


def dataset_get(
    *, tenant: Tenant, dataset_id: str, param: str | None = None, for_update: bool = False
) -> Dataset:
    """The tenant's dataset, or 404 (also for another tenant's id: ids leak nothing)."""
    queryset = dataset_list(tenant=tenant).filter(pk=dataset_id)
    if for_update:
        queryset = queryset.select_for_update()
    dataset = queryset.first()
    if dataset is None:
        raise NotFound(
            messages.DATASET_NOT_FOUND.format(id=dataset_id), code="dataset_not_found", param=param
        )
    return dataset


def dataset_jobs_unfinished(*, tenant: Tenant, dataset: Dataset) -> list[tuple[str, bool]]:
    """(id, livemode) of the tenant's fine-tuning jobs of either mode, oldest first, that
    train or validate on ``dataset`` and have not finished (validating_files, queued or
    running)."""
    return list(
        FineTuneJob.objects.for_tenant(tenant)
        .filter(Q(training_dataset=dataset) | Q(validation_dataset=dataset))
        .exclude(status__in=FineTuneJob.TERMINAL)
        .order_by("created_at", "pk")
        .values_list("pk", "livemode")
    )


def dataset_to_dict(dataset: Dataset) -> dict[str, Any]:
    return {
        "id": dataset.id,
        "object": "dataset",
        "filename": dataset.filename,
        "format": dataset.format or None,
        "bytes": dataset.bytes,
        "status": dataset.status,
        "rows": dataset.rows,
        # By label, as validation counted them (PostgreSQL's jsonb keeps them by length).
        "labels": dict(sorted(dataset.labels.items())),
        "errors": dataset.errors,
        "error_count": dataset.error_count,
        "warnings": dataset.warnings,
        "sha256": dataset.raw_file,
        "created_at": dataset.created_at,
    }
