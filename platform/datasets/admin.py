from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from .models import Dataset


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin[Dataset]):
    list_display = ["id", "tenant", "filename", "status", "rows", "created_at", "deleted_at"]
    list_filter = ["status", "format"]
    search_fields = ["id", "tenant__slug", "filename"]
    readonly_fields = [
        "raw_file", "content_file", "errors", "warnings", "labels", "files_released_at",
    ]  # fmt: skip

    def get_queryset(self, request: HttpRequest) -> QuerySet[Dataset]:
        # Operators see every tenant's datasets: deliberately unscoped.
        return Dataset.objects.unscoped().select_related("tenant")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # A deleted dataset whose files have left the store stays deleted (brought back, it
        # could be trained on, and every job would fail on the missing file).
        fields = list(self.readonly_fields)
        if obj is not None and obj.files_released_at is not None:
            fields.append("deleted_at")
        return fields
