from __future__ import annotations

from django.db import models

from core.ids import new_id
from core.scoping import TenantScopedManager


def _dataset_id() -> str:
    return new_id("ds")


class Dataset(models.Model):
    """An uploaded labelled file and what validation found in it. The bytes live in the
    artifact store (content-addressed); this row is the tenant's handle on them."""

    class Status(models.TextChoices):
        VALID = "valid", "Valid"
        INVALID = "invalid", "Invalid"

    class Format(models.TextChoices):
        JSONL = "jsonl", "JSONL"
        CSV = "csv", "CSV"

    id = models.CharField(primary_key=True, max_length=32, default=_dataset_id, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    filename = models.CharField(max_length=255, blank=True, default="")
    format = models.CharField(max_length=8, choices=Format.choices, blank=True, default="")
    bytes = models.PositiveBigIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices)
    rows = models.PositiveIntegerField(default=0)
    labels = models.JSONField(default=dict)  # label -> number of rows
    errors = models.JSONField(default=list)  # [{"line": n | None, "message": str}], first 100
    error_count = models.PositiveIntegerField(default=0)
    warnings = models.JSONField(default=list)
    # Artifact hashes: the upload as sent, and (valid files only) the normalised JSONL that
    # training reads. Content-addressed, so they stay valid after the dataset is deleted
    # for jobs that were already given them.
    raw_file = models.CharField(max_length=64)
    content_file = models.CharField(max_length=64, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    deleted_at = models.DateTimeField(null=True, blank=True)
    # Set once a deleted dataset's files have left the store, or are left to another
    # dataset that refers to the same bytes (``datasets.services.dataset_files_sweep``).
    files_released_at = models.DateTimeField(null=True, blank=True)

    objects = TenantScopedManager()

    class Meta:
        indexes = [models.Index(fields=["tenant", "-created_at"], name="dataset_tenant_created")]

    def __str__(self) -> str:
        return self.id
