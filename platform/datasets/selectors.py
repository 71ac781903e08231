from __future__ import annotations

from typing import Any

from core.errors import NotFound
from core.scoping import TenantScopedQuerySet
from tenants.models import Tenant

from . import messages
from .models import Dataset


def dataset_list(*, tenant: Tenant) -> TenantScopedQuerySet:
    return Dataset.objects.for_tenant(tenant).filter(deleted_at__isnull=True)


def dataset_get(*, tenant: Tenant, dataset_id: str, param: str | None = None) -> Dataset:
    """The tenant's dataset, or 404 (also for another tenant's id: ids leak nothing)."""
    dataset = dataset_list(tenant=tenant).filter(pk=dataset_id).first()
    if dataset is None:
        raise NotFound(
            messages.DATASET_NOT_FOUND.format(id=dataset_id), code="dataset_not_found", param=param
        )
    return dataset


def dataset_to_dict(dataset: Dataset) -> dict[str, Any]:
    return {
        "id": dataset.id,
        "object": "dataset",
        "filename": dataset.filename,
        "format": dataset.format or None,
        "bytes": dataset.bytes,
        "status": dataset.status,
        "rows": dataset.rows,
        "labels": dataset.labels,
        "errors": dataset.errors,
        "error_count": dataset.error_count,
        "warnings": dataset.warnings,
        "sha256": dataset.raw_file,
        "created_at": dataset.created_at,
    }
