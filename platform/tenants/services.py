from __future__ import annotations

from django.db import transaction
from django.utils.text import slugify

from apikeys.generations import api_key_generation_bump_for_tenants
from core.errors import Conflict, InvalidRequest
from core.ids import random_token
from finetuning.services import fine_tunes_stop_for_suspension

from . import messages
from .models import Tenant
from .selectors import tenant_context_forget

# A derived slug leaves room for a "-xxxxxx" suffix within the column's 64 characters.
DERIVED_SLUG_LENGTH = 48


@transaction.atomic
def tenant_create(*, name: str, slug: str | None = None) -> Tenant:
    """A tenant named ``name`` (surrounding whitespace removed). An explicit ``slug`` is used
    as given or refused (``invalid_slug``, 409 ``slug_taken``): never silently changed. A
    slug derived from the name gets a random suffix when the plain one is taken."""
    name = name.strip()
    max_name = Tenant._meta.get_field("name").max_length or 0
    if not name:
        raise InvalidRequest(messages.NAME_BLANK, code="invalid_name", param="name")
    if len(name) > max_name:
        raise InvalidRequest(
            messages.NAME_TOO_LONG.format(length=len(name), max_length=max_name),
            code="invalid_name",
            param="name",
        )
    if slug is not None:
        return Tenant.objects.create(name=name, slug=_explicit_slug(slug))
    base = slugify(name)[:DERIVED_SLUG_LENGTH].strip("-_") or "tenant"
    candidate = base
    while Tenant.objects.filter(slug=candidate).exists():
        candidate = f"{base}-{random_token(6).lower()}"
    return Tenant.objects.create(name=name, slug=candidate)


def _explicit_slug(slug: str) -> str:
    max_slug = Tenant._meta.get_field("slug").max_length or 0
    if not slug or slug != slugify(slug) or len(slug) > max_slug:
        suggestion = slugify(slug)[:max_slug]
        hint = f" (for example '{suggestion}')" if suggestion else ""
        raise InvalidRequest(
            messages.SLUG_INVALID.format(slug=slug, max_length=max_slug, hint=hint),
            code="invalid_slug",
            param="slug",
        )
    holder = Tenant.objects.filter(slug=slug).values_list("pk", flat=True).first()
    if holder is not None:
        raise Conflict(
            messages.SLUG_TAKEN.format(slug=slug, tenant_id=holder), code="slug_taken", param="slug"
        )
    return slug


@transaction.atomic
def tenant_set_status(*, tenant: Tenant, status: str) -> Tenant:
    """Suspend or reactivate: effective on the next request, in every API process."""
    tenant.status = status
    tenant.save(update_fields=["status"])
    tenant_status_changed(tenant_ids=[tenant.pk], status=status)
    return tenant


def tenant_status_changed(*, tenant_ids: list[str], status: str) -> None:
    """Apply these tenants' new ``status``. Every API process sees it on their keys' next
    request: each key gets a new generation (``apikeys.services``), so a process's cached key
    row is read again from the database, with its tenant, rather than used with a cached
    tenant. A suspension also stops their unfinished fine-tuning jobs, unbilled. Call it
    inside the transaction that changes the status."""
    ids = list(tenant_ids)
    api_key_generation_bump_for_tenants(tenant_ids=ids)
    if status == Tenant.Status.SUSPENDED:
        fine_tunes_stop_for_suspension(tenant_ids=ids)

    def forget() -> None:
        for tenant_id in ids:
            tenant_context_forget(tenant_id=tenant_id)

    forget()
    # NOTE: again once committed: this process may have read the old status in between.
    transaction.on_commit(forget)
