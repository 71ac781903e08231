"""The Workers page: the data plane as operators see it (``ops.workers``)."""

from __future__ import annotations

from typing import Any

import redis
from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path

from workers.presence import SILENT_AFTER_BEATS

from .models import Worker
from .workers import fleet_cost, queue_depths, workers_seen


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin[Worker]):
    """Read from Redis: nothing to add, change or delete (a worker is started and stopped
    where it runs)."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        """The list page only: a worker has no row to change, delete or show history of
        (Django's other admin pages would look for one in a table that does not exist)."""
        view = self.admin_site.admin_view(self.changelist_view)
        info = self.opts.app_label, self.opts.model_name
        return [path("", view, name=f"{info[0]}_{info[1]}_changelist")]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        context: dict[str, Any] = {
            **self.admin_site.each_context(request), "title": "Workers",
            "opts": self.model._meta, "silent_after_beats": SILENT_AFTER_BEATS,
            "cost_currency": settings.COST_CURRENCY,
        }  # fmt: skip
        try:
            rows = workers_seen()
            context.update(workers=rows, fleet=fleet_cost(rows), queues=queue_depths())
        except redis.RedisError as exc:
            context["unreachable"] = f"Redis cannot be reached ({type(exc).__name__})."
        return TemplateResponse(request, "admin/ops/workers.html", context)
