"""Operators edit the catalogue here. A version anything refers to (a subscriber, a billing
period, usage priced on it, a Stripe plan) never has its terms changed in place: saving new
terms creates the next version (which new subscribers get), and existing subscribers keep
theirs until they are moved. Its name and listing flags may change in place. New terms are
only ever made from the current version (an old one's terms are read-only), and a version
anything refers to is never deleted, so its id never comes to name other terms."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import stripe
from django.contrib import admin
from django.contrib import messages as flash
from django.contrib.admin.utils import quote
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Max, QuerySet
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse

from billing.models import BillingPeriod, PlanSpan, Subscription
from billing.stripe_client import BillingUnavailable
from billing.stripe_sync import plans_sync_to_stripe
from billing.versions import subscribers_move_to_current
from economics.models import UsageRollup
from metering.models import UsageRecord
from plans.terms import FREE_SLUG

from . import messages
from .models import Plan

PRICING_FIELDS = ["stripe_product_id", "stripe_plan_id", "id", "version", "created_at"]


# What an operator may change on a version in use: nothing that prices or limits usage.
IN_PLACE_FIELDS = frozenset({"name", "public", "is_current"})
# The terms: read-only on a version that is not current (new terms come from the current one).
TERMS_FIELDS = [
    field.name
    for field in Plan._meta.concrete_fields
    if field.editable
    and not field.primary_key
    and field.name not in {*IN_PLACE_FIELDS, *PRICING_FIELDS, "slug"}
]


def _referrers(plan: Plan) -> Iterator[str]:
    """What refers to the version, in the operator's words; lazily and cheapest first, so
    that ``_in_use`` stops at the first."""
    if plan.stripe_plan_id:
        yield messages.REFERRED_BY_STRIPE.format(stripe_plan=plan.stripe_plan_id)
    # NOTE: unscoped on purpose: whether any tenant at all refers to this version. The ledger
    # is read as well as the rollups: rollups are derived (rebuilt, or deleted), the ledger
    # is what usage is priced from. Both are indexed on plan_id.
    if Subscription.objects.unscoped().filter(plan_id=plan.pk).exists():
        yield messages.REFERRED_BY_SUBSCRIPTIONS
    if BillingPeriod.objects.unscoped().filter(plan_id=plan.pk).exists():
        yield messages.REFERRED_BY_PERIODS
    if PlanSpan.objects.unscoped().filter(plan_id=plan.pk).exists():
        yield messages.REFERRED_BY_SPANS
    if UsageRollup.objects.unscoped().filter(plan_id=plan.pk).exists():
        yield messages.REFERRED_BY_ROLLUPS
    if UsageRecord.objects.unscoped().filter(plan_id=plan.pk).exists():
        yield messages.REFERRED_BY_LEDGER


def _in_use(plan: Plan) -> bool:
    """Whether changing the version's terms in place would change what was agreed or done:
    a tenant is on it, a billing period or usage was priced on it (rating reads a usage
    row's plan as it is now), or Stripe has its base fee (a Stripe plan's amount is fixed,
    so the next subscriber would pay the old one)."""
    return next(_referrers(plan), None) is not None


def _delete_refusal(plan: Plan) -> str:
    """Why the version may not be deleted, or "". Anything that refers to it would be
    re-priced (or fail) without it, and a later version of its slug would take its id."""
    referrers = list(_referrers(plan))
    if referrers:
        return messages.DELETE_REFUSED.format(plan=plan.pk, referrers="; ".join(referrers))
    if plan.slug == FREE_SLUG and plan.is_current:
        return messages.FREE_CURRENT_NOT_DELETED.format(plan=plan.pk)
    return ""


def _terms_changed(original: Plan, edited: Plan) -> bool:
    return any(
        getattr(original, field.attname) != getattr(edited, field.attname)
        for field in Plan._meta.concrete_fields
        if field.name not in IN_PLACE_FIELDS and field.editable and not field.primary_key
    )


def _version_next(slug: str) -> int:
    """Versions that anything refers to are never deleted (``_delete_refusal``), so the next
    number after the highest kept one was never given to terms that anything recorded."""
    return int(Plan.objects.filter(slug=slug).aggregate(v=Max("version"))["v"] or 0) + 1


def _current_replace(plan: Plan) -> list[str]:
    """Make the slug's current version (if another) stop being current, for ``plan`` to be:
    one current version per slug (``plan_one_current``). Call in the transaction that saves
    ``plan``. The ids it un-set."""
    others = Plan.objects.filter(slug=plan.slug, is_current=True).exclude(pk=plan.pk)
    replaced = list(others.values_list("pk", flat=True))
    others.update(is_current=False)
    return replaced


class PlanForm(ModelForm[Plan]):
    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        for field in ("rate_limit_per_minute", "key_rate_limit_per_minute", "concurrency_cap"):
            if cleaned.get(field) == 0:  # (an operator's audit: it saved, and a new version)
                self.add_error(field, messages.LIMIT_ZERO)
        plan = self.instance
        # Every tenant without a subscription is on free's current version (limits, usage).
        slug = cleaned.get("slug", plan.slug)
        if slug == FREE_SLUG and not cleaned.get("is_current", plan.is_current):
            current = Plan.objects.filter(slug=FREE_SLUG, is_current=True).exclude(pk=plan.pk)
            if not current.exists():
                self.add_error("is_current", messages.FREE_NEEDS_CURRENT)
        return cleaned


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin[Plan]):
    form = PlanForm
    list_display = ["id", "name", "is_current", "public", "base_fee", "currency",
                    "included_inputs", "stripe_plan_id"]  # fmt: skip
    list_filter = ["slug", "is_current", "public"]
    readonly_fields = PRICING_FIELDS
    actions = ["sync_to_stripe", "move_subscribers"]

    def get_readonly_fields(self, request: HttpRequest, obj: Plan | None = None) -> list[str]:
        if obj is None:
            return PRICING_FIELDS
        # NOTE: a slug edit on a version in use made an identical next version of the old
        # slug (the slug is not the version's to change); an old version's terms would be
        # the next version's, silently undoing the current one's.
        # As stored, not as posted: a form refused after "current" was ticked on an old
        # version would be drawn with its terms as fields the form lacks (a 500).
        current = Plan.objects.filter(pk=obj.pk, is_current=True).exists()
        return [*PRICING_FIELDS, "slug", *([] if current else TERMS_FIELDS)]

    def has_delete_permission(self, request: HttpRequest, obj: Plan | None = None) -> bool:
        if obj is not None and _delete_refusal(obj):
            return False
        return super().has_delete_permission(request, obj)

    def get_deleted_objects(
        self, objs: Sequence[Plan] | QuerySet[Plan], request: HttpRequest
    ) -> tuple[list[Any], dict[Any, Any], set[Any], list[Any]]:
        """The delete action's confirmation: a version that may not be deleted is listed as
        protected, with why (the page then deletes nothing)."""
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        refusals = [refusal for plan in objs if (refusal := _delete_refusal(plan))]
        if refusals:
            # Not "your account lacks a permission", which has_delete_permission's refusal
            # of these versions would otherwise read as.
            perms_needed.discard(Plan._meta.verbose_name)
            protected = [*protected, *refusals]
        return deleted, counts, perms_needed, protected

    def save_model(
        self, request: HttpRequest, obj: Plan, form: ModelForm[Plan], change: bool
    ) -> None:
        original = Plan.objects.get(pk=obj.pk) if change else None
        if original is not None and _terms_changed(original, obj):
            if not original.is_current:  # the form shows them read-only
                raise PermissionDenied(
                    messages.OLD_VERSION_TERMS.format(plan=original.pk, slug=original.slug)
                )
            if _in_use(original):
                self._save_as_next_version(request, obj, original)
                return
        with transaction.atomic():
            if original is None:
                obj.version = _version_next(obj.slug)
                obj.id = f"{obj.slug}@{obj.version}"
            replaced = _current_replace(obj) if obj.is_current else []
            super().save_model(request, obj, form, change)
        if replaced:
            flash.info(
                request,
                messages.MADE_CURRENT.format(plan=obj.pk, slug=obj.slug, replaced=replaced[0]),
            )

    def _save_as_next_version(self, request: HttpRequest, obj: Plan, original: Plan) -> None:
        with transaction.atomic():
            obj.pk = None
            obj.slug = original.slug
            obj.version = _version_next(original.slug)
            obj.id = f"{original.slug}@{obj.version}"
            obj.is_current = True
            obj.stripe_plan_id = ""  # a new version is a new Stripe plan (its amount is fixed)
            _current_replace(obj)
            obj.save(force_insert=True)
        flash.info(request, messages.NEW_VERSION_SAVED.format(old=original.pk, new=obj.pk))
        request._plan_saved_as = obj.pk  # type: ignore[attr-defined]  # (response_change)

    def response_change(self, request: HttpRequest, obj: Plan) -> HttpResponse:
        new = getattr(request, "_plan_saved_as", None)
        if new is None:
            return super().response_change(request, obj)
        # The new version's own page: Django's "changed successfully" linked the page of
        # the version edited, which kept its terms (an audit).
        return HttpResponseRedirect(reverse("admin:plans_plan_change", args=[quote(new)]))

    @admin.action(
        description="Sync the selected plans to Stripe (product + monthly plan)",
        permissions=["change"],
    )
    def sync_to_stripe(self, request: HttpRequest, queryset: QuerySet[Plan]) -> None:
        try:
            synced = plans_sync_to_stripe(plans=list(queryset))
        except (BillingUnavailable, stripe.StripeError) as exc:
            # NOTE: BillingUnavailable includes a Stripe plan found with other terms than the
            # version's (StripePlanMismatch), whose text says which.
            self.message_user(request, messages.STRIPE_SYNC_FAILED.format(error=exc), flash.ERROR)
            return
        paid = ", ".join(plan.id for plan in synced if plan.stripe_plan_id)
        self.message_user(
            request, messages.STRIPE_SYNCED.format(plans=paid or messages.STRIPE_SYNCED_NONE)
        )

    @admin.action(
        description="Move subscribers of older versions onto the selected current version",
        permissions=["change"],
    )
    def move_subscribers(self, request: HttpRequest, queryset: QuerySet[Plan]) -> None:
        """A new version's terms (a price cut) for the tenants already on the plan: each
        moved as by a plan change of its own, prorated in Stripe (``billing.versions``)."""
        for plan in queryset.order_by("pk"):
            if not plan.is_current:
                self.message_user(
                    request, messages.MOVE_NOT_CURRENT.format(plan=plan.pk), flash.ERROR
                )
                continue
            if plan.slug == FREE_SLUG:
                self.message_user(request, messages.MOVE_FREE.format(plan=plan.pk))
                continue
            result = subscribers_move_to_current(plan=plan)
            self.message_user(
                request,
                messages.MOVED.format(plan=plan.pk, moved=len(result.moved)),
                flash.SUCCESS if result.moved else flash.INFO,
            )
            if result.refused:
                refused = "; ".join(f"{tenant}: {why}" for tenant, why in result.refused)
                self.message_user(
                    request,
                    messages.MOVE_REFUSED.format(count=len(result.refused), refused=refused),
                    flash.ERROR,
                )

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        return {"is_current": True}
