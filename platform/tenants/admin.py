from collections.abc import Sequence
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.text import slugify

from apikeys.generations import api_key_generation_bump_for_tenants
from core.admin import AtomicActionsAdmin

from . import messages as tenant_messages
from .models import Tenant
from .services import tenant_set_status, tenant_status_changed


class TenantForm(forms.ModelForm):
    """As ``create_tenant`` takes a slug: lowercase (the admin took ``DELTA``, which
    ``create_api_key delta`` and the ledger's search then did not find, and ``ACME`` beside
    ``acme``: an audit)."""

    class Meta:
        model = Tenant
        fields = ["name", "slug", "status"]

    def clean_slug(self) -> str:
        slug = str(self.cleaned_data["slug"])
        if slug != slugify(slug):
            max_length = Tenant._meta.get_field("slug").max_length
            hint = f" (for example '{slugify(slug)}')" if slugify(slug) else ""
            raise forms.ValidationError(
                tenant_messages.SLUG_INVALID.format(slug=slug, max_length=max_length, hint=hint)
            )
        return slug


@admin.register(Tenant)
class TenantAdmin(AtomicActionsAdmin):
    form = TenantForm
    list_display = ["name", "slug", "status", "created_at"]
    list_filter = ["status"]
    search_fields = ["name", "slug", "id"]
    readonly_fields = ["id", "created_at"]
    actions = ["suspend", "reactivate"]

    def get_deleted_objects(
        self, objs: Sequence[Tenant] | QuerySet[Tenant], request: HttpRequest
    ) -> tuple[list[Any], dict[Any, Any], set[Any], list[Any]]:
        """A tenant with a ledger, invoices or jobs is listed as protected, saying why (the
        page then deletes nothing), not as "your account doesn't have permission to delete"
        them, which no account has (an audit)."""
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        if perms_needed:
            kept = ", ".join(str(name) for name in sorted(perms_needed, key=str))
            protected = [*protected, tenant_messages.DELETE_KEPT.format(kept=kept)]
            perms_needed = set()
        return deleted, counts, perms_needed, protected

    # A suspension or reactivation applies on the next request in every API process, as a
    # change to a key does (tenants.services.tenant_status_changed).
    def save_model(self, request: HttpRequest, obj: Tenant, form: Any, change: bool) -> None:
        with transaction.atomic():
            before = Tenant.objects.filter(pk=obj.pk).values_list("status", flat=True).first()
            super().save_model(request, obj, form, change)
            if change and before != obj.status:
                tenant_status_changed(tenant_ids=[obj.pk], status=obj.status)

    # NOTE: an action runs from the list page, which view-only staff reach too: without
    # ``permissions`` Django offers it (and runs it) to anyone who may see the list.
    @admin.action(description="Suspend selected tenants", permissions=["change"])
    def suspend(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        self._set_status(request, queryset, Tenant.Status.SUSPENDED, "suspended")

    @admin.action(description="Reactivate selected tenants", permissions=["change"])
    def reactivate(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        self._set_status(request, queryset, Tenant.Status.ACTIVE, "reactivated")

    def _set_status(
        self, request: HttpRequest, queryset: QuerySet[Tenant], status: str, done: str
    ) -> None:
        changed = 0
        with transaction.atomic():
            for tenant in queryset.exclude(status=status):
                tenant_set_status(tenant=tenant, status=status)
                changed += 1
        self.message_user(request, f"{changed} tenant(s) {done}.", messages.SUCCESS)

    # A deleted tenant's keys go with it: API processes stop using their cached copies on
    # the keys' next request (apikeys.services).
    def delete_model(self, request: HttpRequest, obj: Tenant) -> None:
        with transaction.atomic():
            api_key_generation_bump_for_tenants(tenant_ids=[obj.pk])
            super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        with transaction.atomic():
            ids = list(queryset.values_list("pk", flat=True))
            api_key_generation_bump_for_tenants(tenant_ids=ids)
            super().delete_queryset(request, queryset)
