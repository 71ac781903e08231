"""Operators in the admin: an in-use plan version is never edited in place, and the
Stripe sync action."""

from __future__ import annotations

import json

import pytest
from django.contrib.admin.sites import site
from django.contrib.messages.storage.fallback import FallbackStorage
from django.test import RequestFactory

from billing.models import Subscription
from billing.subscriptions import subscription_get_or_create
from plans.admin import PlanAdmin
from plans.models import Plan

pytestmark = pytest.mark.django_db


def _request(admin_user):
    request = RequestFactory().post("/admin/plans/plan/")
    request.user = admin_user
    request.session = {}
    request._messages = FallbackStorage(request)
    return request


def test_editing_a_version_in_use_saves_the_next_version(tenant, admin_user):
    subscription_get_or_create(tenant=tenant)  # the tenant is on free@1
    edited = Plan.objects.get(pk="free@1")
    edited.included_inputs = 2_000
    PlanAdmin(Plan, site).save_model(_request(admin_user), edited, form=None, change=True)

    old, new = Plan.objects.get(pk="free@1"), Plan.objects.get(pk="free@2")
    assert (old.included_inputs, old.is_current) == (10_000, False)
    assert (new.included_inputs, new.is_current, new.version) == (2_000, True, 2)
    assert Subscription.objects.for_tenant(tenant).get().plan_id == "free@1"  # kept

    # A version nobody is on yet is edited in place.
    new.included_inputs = 3_000
    PlanAdmin(Plan, site).save_model(_request(admin_user), new, form=None, change=True)
    assert Plan.objects.get(pk="free@2").included_inputs == 3_000
    assert Plan.objects.filter(slug="free").count() == 2


def _edit(admin_user, plan_id: str, **changes) -> None:
    edited = Plan.objects.get(pk=plan_id)
    for name, value in changes.items():
        setattr(edited, name, value)
    PlanAdmin(Plan, site).save_model(_request(admin_user), edited, form=None, change=True)


def test_a_version_with_priced_usage_or_a_stripe_plan_keeps_its_terms(tenant, admin_user):
    """No subscriber left on it is not enough: usage priced on a version would be re-priced
    by new terms, and a version synced to Stripe would keep charging Stripe's old base fee
    to its next subscriber. New terms are the next version; names and flags change in place."""
    from datetime import date

    from economics.models import UsageRollup

    UsageRollup.objects.create(
        day=date(2026, 11, 2), tenant=tenant, model="minilm-l6", kind="classify",
        livemode=True, plan_id="pro@1", requests=1, inputs=120_000,
    )  # fmt: skip
    Plan.objects.filter(pk="scale@1").update(stripe_plan_id="margin-scale-v1")
    _edit(admin_user, "pro@1", included_inputs=50_000)
    _edit(admin_user, "scale@1", base_fee=39_900)
    assert Plan.objects.get(pk="pro@1").included_inputs == 100_000
    assert Plan.objects.get(pk="pro@2").included_inputs == 50_000
    old, new = Plan.objects.get(pk="scale@1"), Plan.objects.get(pk="scale@2")
    assert (old.base_fee, old.stripe_plan_id, old.is_current) == (49_900, "margin-scale-v1", False)
    assert (new.base_fee, new.stripe_plan_id, new.is_current) == (39_900, "", True)
    # A new name or listing flag on a version in use is not new terms: edited in place.
    _edit(admin_user, "pro@1", name="Pro (2025)", public=False)
    assert Plan.objects.get(pk="pro@1").name == "Pro (2025)"
    assert Plan.objects.filter(slug="pro").count() == 2


def _form(admin_user, plan: Plan, **changes):
    from django.forms.models import model_to_dict

    request = RequestFactory().get("/admin/plans/plan/")
    request.user = admin_user
    form_class = PlanAdmin(Plan, site).get_form(request, plan, change=True)
    data = {**model_to_dict(plan), **changes}
    data = {k: json.dumps(v) if k == "overage_tiers" else v for k, v in data.items()}
    return form_class(data=data, instance=Plan.objects.get(pk=plan.pk))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"overage_tiers": [1, 2]}, "overage_tiers"),
        ({"overage_tiers": {"standard": [{"up_to": 10, "unit_amount": "40"}]}}, "overage_tiers"),
        ({"overage_tiers": {"gpu": [{"up_to": None, "unit_amount": "4"}]}}, "overage_tiers"),
        ({"overage_tiers": {"standard": [{"up_to": None, "unit_amount": "-4"}]}}, "overage_tiers"),
        ({"finetune_unit_amount": "-1"}, "finetune_unit_amount"),
        ({"currency": "XX"}, "currency"),
    ],
)
def test_the_plan_form_refuses_price_terms_that_cannot_be_priced(admin_user, changes, field):
    """Saved, such a table made /v1/plans and every rating of usage a 500."""
    form = _form(admin_user, Plan.objects.get(pk="pro@1"), **changes)
    assert not form.is_valid()
    assert field in form.errors, form.errors


PRICED = {"standard": [{"up_to": None, "unit_amount": "40"}],
          "int8": [{"up_to": None, "unit_amount": "24"}]}  # fmt: skip
FREE_PRICES = {"standard": [{"up_to": None, "unit_amount": "0"}],
               "int8": [{"up_to": None, "unit_amount": "0"}]}  # fmt: skip


NO_FEE = {"base_fee": 0, "monthly_hard_cap": ""}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        # pay as you go: shown as owed on /v1/usage and the upcoming invoice, never invoiced
        ({**NO_FEE, "overage_tiers": PRICED}, "overage_tiers"),
        ({**NO_FEE, "overage_tiers": PRICED, "monthly_hard_cap": 200_000}, "overage_tiers"),
        ({**NO_FEE, "overage_tiers": FREE_PRICES}, "finetune_unit_amount"),
        ({**NO_FEE, "overage_tiers": PRICED, "monthly_hard_cap": 100_000,
          "finetune_unit_amount": "0"}, None),
        ({**NO_FEE, "overage_tiers": FREE_PRICES, "finetune_unit_amount": "0"}, None),
        ({**NO_FEE, "overage_tiers": FREE_PRICES, "fine_tuning": False}, None),
    ],
)  # fmt: skip
def test_a_plan_without_a_base_fee_must_charge_nothing(admin_user, changes, field):
    """No Stripe subscription is made for a plan without a base fee, so nothing it charges
    is billed: its overage must be capped at the included inputs or free, and its
    fine-tuning free."""
    form = _form(admin_user, Plan.objects.get(pk="pro@1"), **changes)  # 100,000 included
    if field is None:
        assert form.is_valid(), form.errors
    else:
        assert not form.is_valid()
        assert field in form.errors, form.errors
        assert "never billed" in str(form.errors[field])


def test_the_free_plan_saves_unchanged(admin_user):
    form = _form(admin_user, Plan.objects.get(pk="free@1"))  # overage_tiers {}: no overage
    assert form.is_valid(), form.errors


def test_the_free_plan_takes_no_base_fee(admin_user):
    """Its tenants have no Stripe subscription: a fee of 19 USD was saved, shown due on their
    upcoming invoices and counted as revenue on the margins page, never charged."""
    form = _form(admin_user, Plan.objects.get(pk="free@1"), base_fee=1900)
    assert not form.is_valid() and "never billed" in str(form.errors["base_fee"])
    from economics.simulation import proposed_validate

    with pytest.raises(ValueError, match="free plan is never billed"):
        proposed_validate({"free": {"base_fee": 1900}})


def test_sync_action_creates_stripe_plans(admin_client, stripe_api):
    response = admin_client.post(
        "/admin/plans/plan/",
        {"action": "sync_to_stripe", "_selected_action": ["free@1", "pro@1", "scale@1"]},
        follow=True,
    )
    assert response.status_code == 200
    assert "Synced to Stripe: pro@1, scale@1" in response.content.decode()
    assert Plan.objects.get(pk="pro@1").stripe_plan_id == "margin-pro-v1"
    assert stripe_api.Plan.retrieve("margin-scale-v1").amount == 49900


def test_billing_admin_pages_render(admin_client, tenant):
    subscription_get_or_create(tenant=tenant)
    for model in ("subscription", "stripeevent", "invoice", "usagechargepush", "reconciliation"):
        assert admin_client.get(f"/admin/billing/{model}/").status_code == 200, model
