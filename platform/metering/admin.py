from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from core.admin import ReadOnlyAdmin

from .models import UsageRecord


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    """Read-only: the ledger is append-only."""

    list_display = [
        "event_id",
        "tenant",
        "model",
        "inputs",
        "tokens",
        "compute_ms",
        "cached",
        "livemode",
        "occurred_at",
    ]
    list_filter = ["kind", "livemode", "model"]
    search_fields = ["event_id", "tenant__slug", "api_key_id"]
    date_hierarchy = "occurred_at"

    def get_queryset(self, request: HttpRequest) -> QuerySet[UsageRecord]:
        return UsageRecord.objects.unscoped().select_related("tenant")
