"""Operators' unit economics in the admin: margins by tenant, model, plan or day, and the
pricing simulator."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path

from billing.subscriptions import calendar_month
from core.admin import ViewOnlyAdmin

from .models import UsageRollup
from .selectors import DIMENSIONS, margins, pricing_simulate
from .simulation import format_report, moment_parse, proposed_validate


def _range(request: HttpRequest) -> tuple[datetime, datetime]:
    """``?start=&end=`` (ISO 8601, UTC unless an offset says otherwise), else this month;
    a value that does not parse, or a start not before the end, is said on the page."""
    this_month = calendar_month(datetime.now(UTC))
    start, end = this_month
    try:
        if request.GET.get("start"):
            start = moment_parse(request.GET["start"])
        if request.GET.get("end"):
            end = moment_parse(request.GET["end"])
    except ValueError as exc:
        example = "2026-11-01 or 2026-11-01T00:00+05:00"
        messages.error(request, f"Dates must be ISO 8601 ({example}): {exc}")
        return this_month
    if start >= end:
        messages.error(request, "start must be before end; showing this month.")
        return this_month
    return start, end


@admin.register(UsageRollup)
class UsageRollupAdmin(ViewOnlyAdmin):
    list_display = ["day", "tenant", "model", "plan_id", "requests", "inputs", "cost_micros"]
    list_filter = ["kind", "livemode", "plan_id"]
    date_hierarchy = "day"
    change_list_template = "admin/economics/rollup_changelist.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet[UsageRollup]:
        return UsageRollup.objects.unscoped().select_related("tenant")

    def get_urls(self) -> list[URLPattern]:
        own = [
            path("margins/", self.admin_site.admin_view(self.margins_view), name="margins"),
            path("simulate/", self.admin_site.admin_view(self.simulate_view), name="simulate"),
        ]
        return own + super().get_urls()

    def margins_view(self, request: HttpRequest) -> HttpResponse:
        start, end = _range(request)
        by = request.GET.get("by") if request.GET.get("by") in DIMENSIONS else "tenant"
        rows = margins(start=start, end=end, by=str(by))
        context: dict[str, Any] = {
            **self.admin_site.each_context(request), "title": "Margins", "rows": rows,
            "by": by, "dimensions": DIMENSIONS, "start": start, "end": end,
        }  # fmt: skip
        return TemplateResponse(request, "admin/economics/margins.html", context)

    def simulate_view(self, request: HttpRequest) -> HttpResponse:
        start, end = _range(request)
        prices = request.POST.get("prices", "") if request.method == "POST" else ""
        report, error = "", ""
        if prices:
            try:
                proposed = proposed_validate(json.loads(prices))
                report = format_report(pricing_simulate(start=start, end=end, proposed=proposed))
            except ValueError as exc:
                error = str(exc)
        context: dict[str, Any] = {
            **self.admin_site.each_context(request), "title": "Pricing simulator",
            "prices": prices or '{"pro": {"base_fee": 3900, "included_inputs": 50000}}',
            "report": report, "error": error, "start": start, "end": end,
        }  # fmt: skip
        return TemplateResponse(request, "admin/economics/simulate.html", context)
