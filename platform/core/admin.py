"""Admin bases shared by the apps: what operators may look at but not edit."""

from __future__ import annotations

from typing import Any, cast

from django import forms
from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.paginator import Paginator
from django.core.validators import MaxLengthValidator
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils.functional import cached_property


class BoundedLoginForm(AdminAuthenticationForm):
    """The admin's login form, refusing a username longer than a username can be before
    anything is looked up or recorded: a 256-character one was a 500 to anyone (django-axes
    writing the failed login to its 255-character column; an audit). Django's form sets the
    length on the field without checking it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = cast(forms.CharField, self.fields["username"])
        field.validators.append(MaxLengthValidator(field.max_length or 150))


admin.site.login_form = BoundedLoginForm


class ViewOnlyAdmin(admin.ModelAdmin):
    """Rows the API and the workers write (jobs, rollups): operators look, they do not add,
    edit or delete; an edit page would also offer every tenant's related rows in its choice
    lists."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    # NOTE: deleting is a change too: a deleted usage rollup dropped its usage from the
    # margins and made the plan it was priced on look unused, so the plan's terms could be
    # edited in place (plans.admin._in_use).
    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReadOnlyAdmin(ViewOnlyAdmin):
    """Records nothing may change or remove: the ledger, Stripe's mirror. The same rights as
    ViewOnlyAdmin; the name says that these rows are records, not state being worked on."""


class CappedCountPaginator(Paginator):
    """Counts at most ``cap + 1`` rows, for list pages over tables that only grow (the
    ledger): an exact COUNT(*) reads the whole table on every view. The pages stop at the
    cap; the filters and the search reach older rows."""

    cap = 10_000

    @cached_property
    def count(self) -> int:
        # NOTE: a sliced count is SELECT COUNT(*) FROM (... LIMIT cap + 1): the database stops
        # reading at the cap, on the page's own ordering (the primary key, newest first).
        head = self.object_list[: self.cap + 1]
        return head.count() if isinstance(head, QuerySet) else len(head)

    @property
    def capped(self) -> bool:
        return self.count > self.cap


class AtomicActionsAdmin(admin.ModelAdmin):
    """Runs each list-page action, Django's own *Delete selected* too, in one transaction:
    its history entries commit with its change or not at all. (*Delete selected* writes its
    history before it deletes: with Redis down the deletion was rolled back, its history
    kept.) For admins whose changes reach Redis (``core.middleware.AdminUnavailableMiddleware``
    then says that nothing was changed, truthfully)."""

    def response_action(
        self, request: HttpRequest, queryset: QuerySet[Any], *args: Any, **kwargs: Any
    ) -> HttpResponse | None:
        with transaction.atomic():
            return super().response_action(request, queryset, *args, **kwargs)
