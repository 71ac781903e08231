from __future__ import annotations

import functools
import time
from typing import Any

from django.db.models import OuterRef, QuerySet, Subquery

from core.errors import NotFound
from core.rows import column, fetch_one
from tenants.models import Tenant

from . import messages
from .models import AIModel

# Base models change only when an operator edits them: each process re-reads them at most
# this often, which saves a query on every classification.
BASE_MODEL_TTL_S = 5.0
# Ids found to be no base model are remembered too, up to this many in all: ids a caller
# makes up (an unknown model, a fine-tuned one's) are endless, and grew the process by
# ~0.4 KB each.
BASE_MODEL_CACHE_MAX = 1024
_base_models: dict[str, tuple[float, AIModel | None]] = {}


def _base_model(model_id: str) -> AIModel | None:
    now = time.monotonic()
    cached = _base_models.get(model_id)
    if cached is None or now - cached[0] > BASE_MODEL_TTL_S:
        model = (
            AIModel.objects.unscoped()
            .filter(pk=model_id, tenant__isnull=True, deleted_at__isnull=True)
            .first()
        )
        cached = (now, model)
        if model is not None or len(_base_models) < BASE_MODEL_CACHE_MAX:
            _base_models[model_id] = cached
    return cached[1]


def base_model_cached(model_id: str) -> AIModel | None:
    """The live base model ``model_id``, from this process's copy (re-read every
    BASE_MODEL_TTL_S), or None: any tenant may use it."""
    return None if model_id.startswith("ft:") else _base_model(model_id)


@functools.cache
def _visible_where() -> str:
    """``ModelQuerySet.visible_to`` and a primary key, as SQL over AIModel's columns."""
    pk, owner, live, deleted = (
        column(AIModel, name) for name in ("id", "tenant", "livemode", "deleted_at")
    )
    return (
        f"{pk} = %s AND ({owner} IS NULL OR ({owner} = %s AND {live} = %s)) AND {deleted} IS NULL"
    )


def model_get_visible(
    *, tenant: Tenant, model_id: str, livemode: bool, param: str | None = None
) -> AIModel:
    """A base model or one of this tenant's own in the mode asking; anything else
    (including another tenant's fine-tuned model, or a test-mode one asked for live) is a
    404, so ids leak nothing."""
    model = base_model_cached(model_id)
    if model is None:
        # NOTE: AIModel.objects.visible_to(tenant.pk, livemode).filter(pk=model_id).first(),
        # without compiling it on every call to a fine-tuned model (core.rows; test_rows.py).
        model = fetch_one(AIModel, _visible_where(), [model_id, tenant.pk, livemode])
    if model is None:
        raise NotFound(
            messages.MODEL_NOT_FOUND.format(model=model_id), code="model_not_found", param=param
        )
    return model


def _live_variants() -> QuerySet[AIModel]:
    return AIModel.objects.unscoped().filter(deleted_at__isnull=True)


def model_list_visible(*, tenant: Tenant, livemode: bool, deleted: bool = False) -> Any:
    """What GET /v1/models lists; deleted models too with ``deleted`` (its cursors)."""
    # The int8 variant of each fine-tuned model, in the same query (model_to_dict reads it).
    variant = _live_variants().filter(parent=OuterRef("pk")).values("pk")[:1]
    visible = AIModel.objects.visible_to(tenant.pk, livemode, deleted=deleted)
    return visible.annotate(int8_variant_id=Subquery(variant))


def _int8_variant(model: AIModel) -> str | None:
    if hasattr(model, "int8_variant_id"):
        return model.int8_variant_id
    if model.kind != AIModel.Kind.FINE_TUNED or model.parent_id is not None:
        return None
    return _live_variants().filter(parent=model).values_list("pk", flat=True).first()


def model_to_dict(model: AIModel, tenant: Tenant) -> dict[str, Any]:
    return {
        "id": model.id,
        "object": "model",
        "type": model.kind,
        "base_model": model.base_model,
        "owned_by": "system" if model.tenant_id is None else tenant.slug,
        "description": model.description,
        "status": model.status,
        "labels": model.labels,
        "metrics": model.metrics,
        "created_at": model.created_at,
        "int8_variant": _int8_variant(model),
        "parent_model": model.parent_id,
        "accuracy_delta": model.accuracy_delta,
    }
