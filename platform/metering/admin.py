from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.db.models import QuerySet
from django.http import HttpRequest

from core.admin import CappedCountPaginator, ReadOnlyAdmin

from .models import UsageRecord


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    """Read-only: the ledger is append-only. Its list page reads one page of rows and a
    count that stops at a cap, whatever the ledger's size: no date hierarchy (it reads every
    row's month), no filter whose choices come from the rows (DISTINCT over the ledger), no
    full count, no facets."""

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
    # Fixed choices only; one model's rows are ?model=<id> or a search for its exact id.
    list_filter = ["kind", "livemode", ("occurred_at", admin.DateFieldListFilter)]
    search_fields = ["event_id", "tenant__slug", "api_key_id", "=model"]
    paginator = CappedCountPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER

    def get_queryset(self, request: HttpRequest) -> QuerySet[UsageRecord]:
        return UsageRecord.objects.unscoped().select_related("tenant")

    def get_changelist_instance(self, request: HttpRequest) -> ChangeList:
        changelist = super().get_changelist_instance(request)
        paginator: Any = changelist.paginator
        if paginator.capped:
            messages.info(
                request,
                f"More than {paginator.cap:,} usage records match: the count and the pages "
                "stop there. Narrow them with the filters or the search.",
            )
        return changelist
