"""Tenant scoping that fails loudly.

Every tenant-owned model uses ``TenantScopedManager``. Its querysets refuse to run until
they are scoped: ``.for_tenant(tenant)`` (or any filter on ``tenant``/``tenant_id``, which
is what Django's related managers do) or, where code really means every tenant (admin,
operators' jobs), an explicit ``.unscoped()`` that shows up in review.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

from django.db import models

if TYPE_CHECKING:
    from tenants.models import Tenant


class UnscopedQueryError(RuntimeError):
    pass


_SCOPING_LOOKUPS = {"tenant", "tenant_id", "tenant__id", "tenant__in", "tenant_id__in"}


class TenantScopedQuerySet(models.QuerySet[Any]):
    _scoped = False

    def _clone(self) -> Self:
        clone = super()._clone()  # type: ignore[misc]  # private in the stubs
        clone._scoped = self._scoped
        return clone

    def _mark_scoped(self) -> Self:
        self._scoped = True
        return self

    def for_tenant(self, tenant: Tenant | str) -> Self:
        tenant_id = tenant if isinstance(tenant, str) else tenant.pk
        return self.filter(tenant_id=tenant_id)

    def unscoped(self) -> Self:
        return self._chain()._mark_scoped()  # type: ignore[attr-defined]

    def filter(self, *args: Any, **kwargs: Any) -> Self:
        clone = super().filter(*args, **kwargs)
        if _SCOPING_LOOKUPS.intersection(kwargs):
            clone._scoped = True
        return clone

    def _require_scope(self) -> None:
        if not self._scoped:
            raise UnscopedQueryError(
                f"{self.model.__name__} query is not scoped to a tenant; "
                "call .for_tenant(tenant) or, deliberately, .unscoped()."
            )

    def _fetch_all(self) -> None:
        if self._result_cache is None:
            self._require_scope()
        super()._fetch_all()

    def count(self) -> int:
        self._require_scope()
        return super().count()

    def exists(self) -> bool:
        self._require_scope()
        return super().exists()

    def aggregate(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self._require_scope()
        return super().aggregate(*args, **kwargs)

    def update(self, **kwargs: Any) -> int:
        self._require_scope()
        return super().update(**kwargs)

    def delete(self) -> tuple[int, dict[str, int]]:
        self._require_scope()
        return super().delete()

    def iterator(self, chunk_size: int | None = None) -> Any:
        self._require_scope()
        return super().iterator(chunk_size=chunk_size)


class TenantScopedManager(models.Manager[Any]):
    def get_queryset(self) -> TenantScopedQuerySet:
        return TenantScopedQuerySet(self.model, using=self._db)

    def for_tenant(self, tenant: Tenant | str) -> TenantScopedQuerySet:
        return self.get_queryset().for_tenant(tenant)

    def unscoped(self) -> TenantScopedQuerySet:
        return self.get_queryset().unscoped()
