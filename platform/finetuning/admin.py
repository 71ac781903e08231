from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from .models import FineTuneEvent, FineTuneJob


class _ViewOnly(admin.ModelAdmin):
    """Jobs start, run and are cancelled through the API and the workers, and their events
    are what happened: operators look, they do not edit. (An edit page would also offer
    every tenant's datasets or jobs in its choice lists.)"""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(FineTuneJob)
class FineTuneJobAdmin(_ViewOnly):
    list_display = [
        "id",
        "tenant",
        "method",
        "status",
        "attempt",
        "fine_tuned_model",
        "created_at",
        "finished_at",
    ]
    list_filter = ["status", "method"]
    search_fields = ["id", "tenant__slug", "fine_tuned_model"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[FineTuneJob]:
        # Operators see every tenant's jobs: deliberately unscoped.
        return FineTuneJob.objects.unscoped().select_related("tenant")


@admin.register(FineTuneEvent)
class FineTuneEventAdmin(_ViewOnly):
    list_display = ["id", "job", "attempt", "seq", "type", "level", "message", "created_at"]
    list_filter = ["level", "type"]
    search_fields = ["job__id"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[FineTuneEvent]:
        return FineTuneEvent.objects.unscoped().select_related("job")
