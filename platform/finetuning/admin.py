from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from core.admin import ViewOnlyAdmin

from .models import FineTuneEvent, FineTuneJob

# Jobs start, run and are cancelled through the API and the workers, and their events are
# what happened: view-only.


@admin.register(FineTuneJob)
class FineTuneJobAdmin(ViewOnlyAdmin):
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
class FineTuneEventAdmin(ViewOnlyAdmin):
    list_display = ["id", "job", "attempt", "seq", "type", "level", "message", "created_at"]
    list_filter = ["level", "type"]
    search_fields = ["job__id"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[FineTuneEvent]:
        return FineTuneEvent.objects.unscoped().select_related("job")
