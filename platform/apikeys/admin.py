from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from core.admin import AtomicActionsAdmin

from .generations import api_key_generation_bump
from .models import ApiKey, Scope
from .selectors import working_admin_keys


class ApiKeyAdminForm(forms.ModelForm[ApiKey]):
    """Scopes are a choice among the four, at least one, stored as a list in the enum's
    order: the column is JSON, and free JSON here once made keys the API cannot describe
    (``["bogus"]``) or, with a string, keys that matched scopes by substring."""

    scopes = forms.MultipleChoiceField(
        choices=Scope.choices, widget=forms.CheckboxSelectMultiple, required=True
    )

    class Meta:
        model = ApiKey
        fields = ["name", "scopes", "expires_at"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            self.initial["scopes"] = self.instance.scope_list

    def clean_scopes(self) -> list[str]:
        chosen = set(self.cleaned_data["scopes"])
        return [scope for scope in Scope.values if scope in chosen]


@admin.register(ApiKey)
class ApiKeyAdmin(AtomicActionsAdmin):
    form = ApiKeyAdminForm
    list_display = [
        "id",
        "tenant",
        "name",
        "mode",
        "scopes",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    ]
    fields = [
        "id",
        "tenant",
        "mode",
        "name",
        "scopes",
        "expires_at",
        "created_at",
        "last_used_at",
        "revoked_at",
        "previous_secret_expires_at",
    ]
    list_filter = ["mode", "revoked_at"]
    search_fields = ["id", "name", "tenant__slug"]
    # NOTE: ``mode`` is fixed by the secret's prefix (sk_live_/sk_test_): a test secret
    # flipped to live would be billed, and its listed prefix would no longer match it.
    readonly_fields = [
        "id",
        "tenant",
        "mode",
        "created_at",
        "last_used_at",
        "revoked_at",
        "previous_secret_expires_at",
    ]
    actions = ["revoke"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ApiKey]:
        return ApiKey.objects.unscoped().select_related("tenant")  # operators see every tenant

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # keys are minted by create_tenant or the API, which show the secret once

    # NOTE: without ``permissions`` an action is offered (and run) to anyone who may see the
    # list, view-only staff included.
    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: Any) -> None:
        """Revokes whatever is selected, a tenant's last admin key included (an operator may
        have to: a leaked secret), but says which tenants are left without one and how to
        give them one again; the API itself refuses that (409 ``last_admin_key``)."""
        now = timezone.now()
        with transaction.atomic():
            live = queryset.filter(revoked_at__isnull=True)
            rows = list(live.values_list("pk", "tenant__slug", "tenant_id"))
            live.update(revoked_at=now)
            # Every API process's cached copy stops being used on its next request.
            api_key_generation_bump(key_ids=[pk for pk, _, _ in rows])
        tenants = {tenant_id: slug for _, slug, tenant_id in rows}
        keys = ApiKey.objects.unscoped().filter(tenant_id__in=tenants)
        served = {key.tenant_id for key in working_admin_keys(keys, now=now)}
        stranded = sorted(slug for tenant_id, slug in tenants.items() if tenant_id not in served)
        self.message_user(request, f"{len(rows)} key(s) revoked.", messages.SUCCESS)
        if stranded:
            self.message_user(
                request,
                f"No live admin key is left to {', '.join(stranded)}: they cannot manage their"
                " keys until one is minted for them (manage.py create_api_key SLUG).",
                messages.WARNING,
            )

    # Every change to a key, here as through the API, sets a new generation: API processes
    # stop using their cached copy of it on its next request (apikeys.services).
    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            api_key_generation_bump(key_ids=[obj.pk])

    def delete_model(self, request: HttpRequest, obj: ApiKey) -> None:
        with transaction.atomic():
            api_key_generation_bump(key_ids=[obj.pk])
            super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        with transaction.atomic():
            api_key_generation_bump(key_ids=list(queryset.values_list("pk", flat=True)))
            super().delete_queryset(request, queryset)
