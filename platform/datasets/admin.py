from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from .models import Dataset


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin[Dataset]):
    list_display = ["id", "tenant", "filename", "status", "rows", "created_at", "deleted_at"]
    list_filter = ["status", "format"]
    search_fields = ["id", "tenant__slug", "filename"]
    readonly_fields = ["raw_file", "content_file", "errors", "warnings", "labels"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Dataset]:
        # Operators see every tenant's datasets: deliberately unscoped.
        return Dataset.objects.unscoped().select_related("tenant")
