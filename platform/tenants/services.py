from __future__ import annotations

from django.db import transaction
from django.utils.text import slugify

from core.ids import random_token

from .models import Tenant
from .selectors import tenant_context_forget


@transaction.atomic
def tenant_create(*, name: str, slug: str | None = None) -> Tenant:
    base = slugify(slug or name)[:48] or "tenant"
    candidate = base
    while Tenant.objects.filter(slug=candidate).exists():
        candidate = f"{base}-{random_token(6).lower()}"
    return Tenant.objects.create(name=name, slug=candidate)


def tenant_set_status(*, tenant: Tenant, status: str) -> Tenant:
    tenant.status = status
    tenant.save(update_fields=["status"])
    tenant_context_forget(tenant_id=tenant.pk)
    return tenant
