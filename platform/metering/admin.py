from typing import Any

import redis
from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.views.main import ChangeList
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils.text import smart_split, unescape_string_literal

from core.admin import CappedCountPaginator, ReadOnlyAdmin
from inference.models import AIModel
from tenants.models import Tenant

from .corrections import VoidRefused, credit_push_soon, usage_record_void
from .models import UsageRecord

# Records one void action takes at most (each is a transaction of its own).
VOID_AT_ONCE = 100


class VoidForm(forms.Form):
    reason = forms.CharField(max_length=1000, widget=forms.Textarea(attrs={"rows": 3, "cols": 80}))


class CorrectionFilter(admin.SimpleListFilter):
    """Fixed choices: no query for them."""

    title = "correction"
    parameter_name = "correction"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Correcting rows"), ("no", "Metered events")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "yes":
            return queryset.exclude(corrects="")
        if self.value() == "no":
            return queryset.filter(corrects="")
        return queryset


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    """Read-only: the ledger is append-only; its one action appends correcting rows
    (``metering.corrections``), for operators with the ``void_usagerecord`` right. Its list
    page reads one page of rows and a count that stops at a cap, whatever the ledger's size:
    no date hierarchy (it reads every row's month), no filter whose choices come from the
    rows (DISTINCT over the ledger), no full count, no facets."""

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
        "corrects",
    ]
    # Fixed choices only; one model's rows are ?model=<id> or a search for its exact id.
    list_filter = [
        "kind", "livemode", CorrectionFilter, ("occurred_at", admin.DateFieldListFilter)
    ]  # fmt: skip
    # Exact matches only, each on an index (get_search_results adds tenants and models): a
    # contains-search read every row of every month, twice (the page and its count).
    search_fields = ["=event_id", "=api_key_id", "=corrects"]
    search_help_text = (
        "Exact match, whole ids only: an event id (finds its correcting row too), an API key "
        "id, a tenant's slug or id, or a registered model's id; several words must all match. "
        "Any model, registered or not: add ?model=<id> to the address."
    )
    actions = ["void_selected"]
    paginator = CappedCountPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER

    def get_queryset(self, request: HttpRequest) -> QuerySet[UsageRecord]:
        return UsageRecord.objects.unscoped().select_related("tenant")

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[UsageRecord], search_term: str
    ) -> tuple[QuerySet[UsageRecord], bool]:
        """Django's exact search over ``search_fields``, each word also naming a tenant (its
        slug or id, looked up in the tenants' table: the ledger is then filtered on its
        tenant index, not joined and read whole) or a registered model. Unregistered words
        are not tried as models: the ledger has no index on its model, and an event id that
        matched nothing would have read every row looking for a model of that name."""
        for word in smart_split(search_term):
            if word.startswith(('"', "'")) and word[0] == word[-1]:
                word = unescape_string_literal(word)
            match = Q(event_id=word) | Q(api_key_id=word) | Q(corrects=word)
            tenants = list(
                Tenant.objects.filter(Q(slug=word) | Q(pk=word)).values_list("pk", flat=True)
            )
            if tenants:
                match |= Q(tenant_id__in=tenants)
            if AIModel.objects.unscoped().filter(pk=word).exists():
                match |= Q(model=word)
            queryset = queryset.filter(match)
        return queryset, False

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

    def has_void_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("metering.void_usagerecord"))

    @admin.action(description="Void selected usage records (a correcting row each)",
                  permissions=["void"])  # fmt: skip
    def void_selected(
        self, request: HttpRequest, queryset: QuerySet[UsageRecord]
    ) -> TemplateResponse | None:
        """A confirmation page that asks for the reason, then a void of each record."""
        records = list(queryset.order_by("pk")[: VOID_AT_ONCE + 1])
        if len(records) > VOID_AT_ONCE:
            self.message_user(
                request, f"Void at most {VOID_AT_ONCE} records at a time: nothing was changed.",
                messages.ERROR,
            )  # fmt: skip
            return None
        form = VoidForm(request.POST if "confirm" in request.POST else None)
        if form.is_valid():
            actor = request.user.get_username()
            voided: list[UsageRecord] = []
            for record in records:
                try:
                    correction = usage_record_void(
                        event_id=record.event_id, reason=form.cleaned_data["reason"],
                        actor=actor, push=False,
                    )  # fmt: skip
                except VoidRefused as exc:
                    self.message_user(request, str(exc), messages.ERROR)
                except redis.RedisError:
                    # (checked before its row is written: this record is unchanged)
                    self.message_user(
                        request, f"Nothing was changed for {record.event_id}: Redis cannot "
                        "be reached.", messages.ERROR,
                    )  # fmt: skip
                else:
                    # The admin's own history too: who appended which correcting row, and why.
                    self.log_addition(request, correction, f"Voids {record.event_id}: "
                                      f"{form.cleaned_data['reason']}")  # fmt: skip
                    self.message_user(
                        request, f"Voided {record.event_id}: correcting row {correction.pk} "
                        f"({correction.event_id}).", messages.SUCCESS,
                    )  # fmt: skip
                    voided.append(correction)
            credit_push_soon(voided)  # one usage push a tenant's period
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Void usage records",
            "opts": self.model._meta,
            "records": records,
            "form": form,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/metering/usagerecord_void.html", context)
