"""Operators' unit economics in the admin: margins by tenant, model, plan or day, and the
pricing simulator."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path

from core.admin import ViewOnlyAdmin

from .forms import RangeForm, SimulateForm, range_initial, this_month
from .models import UsageRollup
from .money import cost_currency
from .selectors import DIMENSIONS, margin_totals, margins
from .simulation import simulation_report

View = Callable[[HttpRequest], HttpResponse]


def _range(form: RangeForm) -> tuple[datetime, datetime] | None:
    """The range a form asks for (this month when it asks for none); None when it is
    refused, its errors then on the form."""
    if not form.is_bound:
        return this_month()
    if not form.is_valid():
        return None
    return form.cleaned_data["start"], form.cleaned_data["end"]


class _BoundedDatesChangeList(ChangeList):
    """A date drill-down past the years a date holds (``?day__year=9999`` reaches into year
    10,000; ``2147483648`` overflows) is a wrong lookup (the admin's "?e=1" page), not the
    500 it was: Django catches errors only where it builds the first day (an audit)."""

    def get_filters(self, request: HttpRequest) -> Any:
        try:
            return super().get_filters(request)
        except (ValueError, OverflowError) as exc:  # (the year after 9999; past a C int)
            raise IncorrectLookupParameters(exc) from exc


@admin.register(UsageRollup)
class UsageRollupAdmin(ViewOnlyAdmin):
    list_display = ["day", "tenant", "model", "plan_id", "api_key_id", "requests", "inputs",
                    "cost_micros"]  # fmt: skip
    list_filter = ["kind", "livemode", "plan_id"]
    date_hierarchy = "day"
    change_list_template = "admin/economics/rollup_changelist.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet[UsageRollup]:
        return UsageRollup.objects.unscoped().select_related("tenant")

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return _BoundedDatesChangeList

    def get_urls(self) -> list[URLPattern]:
        own = [
            path("margins/", self._viewers_only(self.margins_view), name="margins"),
            path("simulate/", self._viewers_only(self.simulate_view), name="simulate"),
        ]
        return own + super().get_urls()

    def _viewers_only(self, view: View) -> View:
        """Staff with the permission to view usage rollups (``economics.view_usagerollup``),
        else 403: every tenant's revenue and cost is on these pages, and being staff is not
        enough for that (admin_view alone checks only that)."""

        def guarded(request: HttpRequest) -> HttpResponse:
            if not self.has_view_permission(request):
                raise PermissionDenied
            return view(request)

        return self.admin_site.admin_view(guarded)

    def margins_view(self, request: HttpRequest) -> HttpResponse:
        form = RangeForm(request.GET or None, initial=range_initial())
        by = request.GET.get("by") if request.GET.get("by") in DIMENSIONS else "tenant"
        period = _range(form)
        rows = margins(start=period[0], end=period[1], by=str(by)) if period else []
        context: dict[str, Any] = {
            **self.admin_site.each_context(request), "title": "Margins", "form": form,
            "rows": rows, "totals": margin_totals(rows), "by": by, "dimensions": DIMENSIONS,
            "period": period, "cost_currency": cost_currency(),
        }  # fmt: skip
        return TemplateResponse(request, "admin/economics/margins.html", context)

    def simulate_view(self, request: HttpRequest) -> HttpResponse:
        form = SimulateForm(request.POST if request.method == "POST" else None,
                            initial=range_initial())  # fmt: skip
        period, report = _range(form), ""
        if period and form.is_bound:
            try:
                report = simulation_report(start=period[0], end=period[1],
                                           proposed=form.cleaned_data["prices"])  # fmt: skip
            except ValueError as exc:
                form.add_error(None, str(exc))
        context: dict[str, Any] = {
            **self.admin_site.each_context(request), "title": "Pricing simulator",
            "form": form, "report": report, "period": period,
        }  # fmt: skip
        return TemplateResponse(request, "admin/economics/simulate.html", context)
