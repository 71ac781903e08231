from typing import Any

from django.contrib import admin
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest

from apikeys.models import ApiKey
from apikeys.services import api_key_generation_bump

from .models import Tenant


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin[Tenant]):
    list_display = ["name", "slug", "status", "created_at"]
    list_filter = ["status"]
    search_fields = ["name", "slug", "id"]
    readonly_fields = ["id", "created_at"]

    # A deleted tenant's keys go with it: API processes stop using their cached copies on
    # the keys' next request (apikeys.services).
    def delete_model(self, request: HttpRequest, obj: Tenant) -> None:
        with transaction.atomic():
            _forget_keys_of([obj.pk])
            super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        with transaction.atomic():
            _forget_keys_of(list(queryset.values_list("pk", flat=True)))
            super().delete_queryset(request, queryset)


def _forget_keys_of(tenant_ids: list[Any]) -> None:
    keys = ApiKey.objects.unscoped().filter(tenant_id__in=tenant_ids)
    api_key_generation_bump(key_ids=list(keys.values_list("pk", flat=True)))
