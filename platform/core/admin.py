"""Admin bases shared by the apps: what operators may look at but not edit."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest


class ViewOnlyAdmin(admin.ModelAdmin):
    """Rows the API and the workers write (jobs, rollups): operators look, they do not add
    or edit; an edit page would also offer every tenant's related rows in its choice lists."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReadOnlyAdmin(ViewOnlyAdmin):
    """Records nothing may change or remove: the ledger, Stripe's mirror."""

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
