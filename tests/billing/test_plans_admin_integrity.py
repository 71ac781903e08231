"""The plan catalogue keeps what was agreed and done: a version anything refers to is never
deleted nor its id reused, an old version's terms never come back as new ones, the free plan
always has a current version, and terms are what money can be. Through the admin as an
operator uses it, checked where a tenant or an operator would notice."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.admin.utils import quote
from django.contrib.auth.models import Permission, User
from django.forms.models import model_to_dict
from django.urls import reverse

from billing.models import Subscription
from billing.stripe_sync import StripePlanMismatch, plans_sync_to_stripe
from metering.models import UsageRecord
from metering.services import usage_record_bulk
from plans.models import Plan

pytestmark = pytest.mark.django_db

NOW = datetime.now(UTC)
AUDIT_TIERS = {
    "standard": [{"up_to": None, "unit_amount": "40"}],
    "int8": [{"up_to": None, "unit_amount": "24"}],
}


def _change_url(plan_id: str) -> str:
    return reverse("admin:plans_plan_change", args=[quote(plan_id)])


def _delete_url(plan_id: str) -> str:
    return reverse("admin:plans_plan_delete", args=[quote(plan_id)])


def _form_data(**fields):
    """What the admin's plan form posts: JSON for the tiers, "" for empty numbers, and an
    unchecked box left out."""
    data = {}
    for name, value in fields.items():
        if name == "overage_tiers":
            data[name] = json.dumps(value)
        elif value is None:
            data[name] = ""
        elif value is False:
            continue
        else:
            data[name] = value
    return data


def _plan_add(admin_client, slug: str, **terms):
    spec = {
        "slug": slug, "name": slug.title(), "is_current": True, "public": True,
        "currency": "usd", "base_fee": 1_000, "included_inputs": 0, "overage_tiers": AUDIT_TIERS,
        "finetune_unit_amount": "0", "rate_limit_per_minute": 600, "concurrency_cap": 4,
        "max_fine_tuned_models": 0, "cached_results_billed": True, **terms,
    }  # fmt: skip
    return admin_client.post(reverse("admin:plans_plan_add"), _form_data(**spec))


def _plan_edit(admin_client, plan_id: str, **changes):
    plan = Plan.objects.get(pk=plan_id)
    return admin_client.post(_change_url(plan_id), _form_data(**{**model_to_dict(plan), **changes}))


def _ledger_row(tenant, plan_id: str, n: int = 1, inputs: int = 50_000) -> None:
    """A ledger row only (no rollup): what is left when rollups were deleted."""
    UsageRecord.objects.create(
        event_id=f"req_audit_{n}_{uuid.uuid4().hex[:8]}", kind="inference", tenant=tenant,
        api_key_id="key_a", livemode=True, model="minilm-l6", inputs=inputs, tokens=10,
        compute_ms=1.0, occurred_at=NOW - timedelta(minutes=5), plan_id=plan_id,
    )  # fmt: skip


def _usage(client) -> tuple[int, int]:
    body = client.get("/v1/usage", {"start": (NOW - timedelta(hours=1)).isoformat()})
    assert body.status_code == 200, body.content
    return body.json()["total"]["amount"], body.json()["total"]["inputs"]


def test_a_version_only_usage_refers_to_is_never_deleted_nor_its_id_reused(
    admin_client, tenant, client_for
):
    assert _plan_add(admin_client, "audit").status_code == 302
    assert Plan.objects.filter(slug="audit").get().pk == "audit@1"
    _ledger_row(tenant, "audit@1")  # 50,000 inputs at 40 per 1,000 on audit@1
    api = client_for(tenant, ["billing"])
    assert _usage(api) == (2_000, 50_000)

    # The delete view refuses; so does the delete action, and the page says why.
    refused = admin_client.post(_delete_url("audit@1"), {"post": "yes"})
    assert refused.status_code == 403
    action = admin_client.post(
        reverse("admin:plans_plan_changelist"),
        {"action": "delete_selected", "_selected_action": ["audit@1"], "post": "yes"},
    )
    assert action.status_code == 200
    assert "usage in the ledger was made on it" in action.content.decode()
    assert Plan.objects.filter(pk="audit@1").exists()
    change_page = admin_client.get(_change_url("audit@1")).content.decode()
    assert _delete_url("audit@1") not in change_page  # no Delete button offered

    # Adding the slug again is a new version with a new id; audit@1's usage keeps its price.
    assert (
        _plan_add(admin_client, "audit", overage_tiers={}, monthly_hard_cap=10**6).status_code
        == 302
    )
    assert Plan.objects.get(slug="audit", is_current=True).pk == "audit@2"
    assert Plan.objects.get(pk="audit@1").overage_tiers == AUDIT_TIERS
    assert _usage(api) == (2_000, 50_000)
    assert admin_client.get("/admin/economics/usagerollup/margins/?by=plan").status_code == 200


def test_the_delete_action_refuses_a_selection_with_one_version_in_use(
    admin_client, tenant, client_for
):
    """Rollups refer to it (written with the ledger by the usage consumer)."""
    _plan_add(admin_client, "audit")
    _plan_add(admin_client, "scratch")
    usage_record_bulk(
        events=[{
            "v": 1, "event_id": "req_audit_rolled", "kind": "inference", "tenant_id": tenant.pk,
            "api_key_id": "key_a", "livemode": True, "model": "minilm-l6", "inputs": 1_000,
            "tokens": 10, "compute_ms": 1.0, "cached": 0, "plan_id": "audit@1",
            "occurred_at": (NOW - timedelta(minutes=5)).isoformat(),
        }]
    )  # fmt: skip
    page = admin_client.post(
        reverse("admin:plans_plan_changelist"),
        {"action": "delete_selected", "_selected_action": ["audit@1", "scratch@1"],
         "post": "yes"},
    )  # fmt: skip
    content = page.content.decode()
    assert page.status_code == 200
    assert "audit@1 cannot be deleted" in content and "permission" not in content
    kept = Plan.objects.filter(slug__in=["audit", "scratch"]).values_list("pk", flat=True)
    assert set(kept) == {"audit@1", "scratch@1"}  # nothing deleted
    assert _usage(client_for(tenant, ["billing"])) == (40, 1_000)

    # A version nothing refers to (an operator's mistake) can still be deleted.
    deleted = admin_client.post(_delete_url("scratch@1"), {"post": "yes"})
    assert deleted.status_code == 302
    assert not Plan.objects.filter(slug="scratch").exists()


def test_a_stripe_plan_with_other_terms_is_refused_not_reused(admin_client, stripe_api):
    """A Stripe plan under the version's id that charges another amount (left by a version
    deleted before ids were kept, or another deployment on the account) would bill the next
    subscriber that amount."""
    slug = f"audit{uuid.uuid4().hex[:8]}"
    stripe_api.Product.create(id=f"margin-{slug}", name="Audit")
    stripe_api.Plan.create(
        id=f"margin-{slug}-v1", product=f"margin-{slug}", amount=100, currency="usd",
        interval="month",
    )  # fmt: skip
    _plan_add(admin_client, slug, base_fee=500)
    page = admin_client.post(
        reverse("admin:plans_plan_changelist"),
        {"action": "sync_to_stripe", "_selected_action": [f"{slug}@1"]},
        follow=True,
    )
    content = page.content.decode()
    assert "Stripe sync failed" in content and f"margin-{slug}-v1" in content
    assert "100 USD every 1 month" in content and "500 USD every 1 month" in content
    assert Plan.objects.get(pk=f"{slug}@1").stripe_plan_id == ""
    # The command (which syncs every paid version) fails loudly too.
    with pytest.raises(StripePlanMismatch, match="was not reused"):
        plans_sync_to_stripe(plans=[Plan.objects.get(pk=f"{slug}@1")])


def test_the_free_plan_keeps_a_current_version(admin_client):
    page = _plan_edit(admin_client, "free@1", is_current=False)
    assert page.status_code == 200  # the form again, with the error
    assert "The free plan must always have a current version" in page.content.decode()
    assert Plan.objects.get(pk="free@1").is_current
    refused = admin_client.post(_delete_url("free@1"), {"post": "yes"})
    assert refused.status_code == 403 and Plan.objects.filter(pk="free@1").exists()


def test_free_tenants_are_served_when_free_has_no_current_version(
    tenant, client_for, monkeypatch, caplog
):
    """Set from a shell, past the admin: every free tenant's request used to be a 500."""
    from limits import services as limits

    Plan.objects.create(id="free@2", slug="free", version=2, name="Free", is_current=False,
                        included_inputs=5_000, monthly_hard_cap=5_000)  # fmt: skip
    Plan.objects.filter(slug="free").update(is_current=False)
    monkeypatch.setitem(limits._free, "plan", None)  # enforcement's few seconds' cache
    monkeypatch.setitem(limits._free, "read_at", 0.0)
    with caplog.at_level(logging.ERROR, logger="limits.services"):
        response = client_for(tenant, ["billing"]).get("/v1/usage")
    assert response.status_code == 200, response.content
    assert limits.free_plan_current().pk == "free@2"  # the latest free version
    assert "no current version of the free plan" in caplog.text
    assert client_for(tenant).get("/v1/plans").status_code == 200


def test_usage_in_the_ledger_alone_keeps_a_versions_terms(admin_client, tenant, client_for):
    """Rollups can be deleted and rebuilt: the ledger is what prices usage."""
    _ledger_row(tenant, "pro@1", inputs=150_000)
    api = client_for(tenant, ["billing"])
    before = _usage(api)
    _plan_edit(admin_client, "pro@1", included_inputs=50_000)
    assert Plan.objects.get(pk="pro@1").included_inputs == 100_000
    assert Plan.objects.get(pk="pro@2").included_inputs == 50_000
    assert _usage(api) == before


def test_a_view_only_operator_is_not_offered_the_stripe_sync(client, stripe_api):
    viewer = User.objects.create_user("viewer", password="x", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_plan"))
    client.force_login(viewer)
    page = client.get(reverse("admin:plans_plan_changelist"))
    assert page.status_code == 200 and "sync_to_stripe" not in page.content.decode()
    client.post(
        reverse("admin:plans_plan_changelist"),
        {"action": "sync_to_stripe", "_selected_action": ["pro@1"]},
    )
    assert Plan.objects.get(pk="pro@1").stripe_plan_id == ""


TOO_MUCH = [
    ({"overage_tiers": {"standard": [{"up_to": None, "unit_amount": "1e40"}]}}, "overage_tiers"),
    ({"overage_tiers": {"standard": [{"up_to": None, "unit_amount": "1000000000000"}]}},
     "overage_tiers"),
    ({"overage_tiers": {"standard": [{"up_to": None, "unit_amount": "0.0000001"}]}},
     "overage_tiers"),
    ({"overage_tiers": {"standard": [{"up_to": 10, "unit_amount": "4"},
                                     {"up_to": 10, "unit_amount": "2"},
                                     {"up_to": None, "unit_amount": "1"}]}}, "overage_tiers"),
    ({"overage_tiers": {"standard": [{"up_to": 2**63, "unit_amount": "4"},
                                     {"up_to": None, "unit_amount": "1"}]}}, "overage_tiers"),
    ({"finetune_unit_amount": "100000000"}, "finetune_unit_amount"),
    ({"base_fee": 2**31}, "base_fee"),
]  # fmt: skip


@pytest.mark.parametrize(("changes", "field"), TOO_MUCH)
def test_terms_beyond_what_money_can_be_are_refused(admin_client, changes, field):
    """Saved, 1e40 made margins and /v1/usage a 500 (decimal.InvalidOperation)."""
    page = _plan_edit(admin_client, "pro@1", **changes)
    assert page.status_code == 200  # the form again
    errors = page.context["adminform"].form.errors
    assert field in errors, errors
    assert Plan.objects.filter(slug="pro").count() == 1


def test_the_form_says_which_tier_is_wrong(admin_client):
    tiers = {
        "standard": [{"up_to": 10, "unit_amount": "4"}, {"up_to": None, "unit_amount": "1e40"}]
    }
    errors = _plan_edit(admin_client, "pro@1", overage_tiers=tiers).context["adminform"].form.errors
    assert "overage_tiers.standard[1].unit_amount: must be below 1,000,000,000,000" in str(errors)


def test_the_largest_terms_money_can_be_are_accepted_and_rated(admin_client, tenant, client_for):
    tiers = {
        "standard": [{"up_to": None, "unit_amount": "999999999999.999999"}],
        "int8": [{"up_to": None, "unit_amount": "0"}],
    }
    _plan_edit(admin_client, "pro@1", overage_tiers=tiers, included_inputs=0)
    assert Plan.objects.get(pk="pro@1").overage_tiers == tiers  # nothing refers to it yet
    Subscription.objects.create(
        tenant=tenant, plan_id="pro@1", current_period_start=NOW - timedelta(days=1),
        current_period_end=NOW + timedelta(days=29),
    )  # fmt: skip
    _ledger_row(tenant, "pro@1", inputs=1_000)
    assert _usage(client_for(tenant, ["billing"])) == (1_000_000_000_000, 1_000)


def test_the_pricing_simulator_refuses_the_same_terms():
    from economics.simulation import proposed_validate

    for changes, field in TOO_MUCH:
        with pytest.raises(ValueError, match=f"pro.{field}"):
            proposed_validate({"pro": changes})


def test_an_old_versions_terms_never_come_back_as_the_current_ones(admin_client):
    Plan.objects.filter(pk="pro@1").update(stripe_plan_id="margin-pro-v1")  # in use
    _plan_edit(admin_client, "pro@1", base_fee=3_900)
    assert Plan.objects.get(slug="pro", is_current=True).pk == "pro@2"
    assert 'name="base_fee"' not in admin_client.get(_change_url("pro@1")).content.decode()
    # The old version's name changes in place; its terms cannot be posted.
    page = _plan_edit(admin_client, "pro@1", name="Pro (legacy)", included_inputs=1, base_fee=1)
    assert page.status_code == 302
    old, current = Plan.objects.get(pk="pro@1"), Plan.objects.get(slug="pro", is_current=True)
    assert (old.name, old.included_inputs, old.base_fee) == ("Pro (legacy)", 100_000, 4_900)
    assert (current.pk, current.base_fee) == ("pro@2", 3_900)
    assert Plan.objects.filter(slug="pro").count() == 2


def test_a_new_current_version_of_a_slug_can_be_added_and_an_old_one_made_current(
    admin_client,
):
    added = _plan_add(admin_client, "pro", base_fee=5_900)
    assert added.status_code == 302, added.context["adminform"].form.errors
    assert Plan.objects.get(slug="pro", is_current=True).pk == "pro@2"
    assert not Plan.objects.get(pk="pro@1").is_current
    back = _plan_edit(admin_client, "pro@1", is_current=True)
    assert back.status_code == 302
    assert Plan.objects.get(slug="pro", is_current=True).pk == "pro@1"
    page = admin_client.get(reverse("admin:plans_plan_changelist")).content.decode()
    assert "Pro@1 is now the current version of pro" in page  # capitalised by the admin


def test_the_slug_of_an_existing_version_is_read_only(admin_client):
    Plan.objects.filter(pk="scale@1").update(stripe_plan_id="margin-scale-v1")  # in use
    assert 'name="slug"' not in admin_client.get(_change_url("scale@1")).content.decode()
    _plan_edit(admin_client, "scale@1", slug="enterprise", name="Scale")
    assert not Plan.objects.filter(slug="enterprise").exists()
    assert list(Plan.objects.filter(slug="scale").values_list("pk", flat=True)) == ["scale@1"]


def test_a_price_table_that_leaves_a_model_tier_out_is_refused(admin_client):
    """Left out, a tier's usage was priced at nothing past the included inputs: on pro (no
    hard cap), five million int8 inputs for free."""
    only_standard = {"standard": [{"up_to": None, "unit_amount": "40"}]}
    page = _plan_edit(admin_client, "pro@1", overage_tiers=only_standard)
    errors = page.context["adminform"].form.errors["overage_tiers"]
    assert "but not int8" in errors[0]
    assert Plan.objects.get(pk="pro@1").overage_tiers != only_standard


def test_a_plan_without_a_hard_cap_must_price_its_overage(admin_client):
    """`{}` on pro (no hard cap) made every input past the included ones free; on a capped
    plan (free) it stays what it means: no overage, usage past the cap refused."""
    page = _plan_edit(admin_client, "pro@1", overage_tiers={})
    errors = page.context["adminform"].form.errors["overage_tiers"]
    assert "without a hard cap" in errors[0]
    assert Plan.objects.get(pk="pro@1").overage_tiers != {}
    capped = _plan_edit(admin_client, "pro@1", overage_tiers={}, monthly_hard_cap=500_000)
    assert capped.status_code == 302  # saved (as a new version: pro@1's terms are kept)
    free = _plan_edit(admin_client, "free@1", name="Free (renamed)")
    assert free.status_code == 302


def test_the_simulator_refuses_an_unpriced_overage_on_an_uncapped_plan():
    from economics.simulation import proposed_validate

    with pytest.raises(ValueError, match=r"pro\.overage_tiers: a plan without a hard cap"):
        proposed_validate({"pro": {"overage_tiers": {}}})
    assert proposed_validate({"free": {"overage_tiers": {}}}) == {"free": {"overage_tiers": {}}}


def test_an_old_version_with_unpriced_overage_on_no_cap_cannot_be_made_current(admin_client):
    """Its terms are read-only (it is not current), so the check on them did not run, and new
    subscribers would have had every input past the included ones for free."""
    Plan.objects.create(
        id="legacy@1", slug="legacy", version=1, name="Legacy", is_current=False,
        base_fee=1000, included_inputs=1000, overage_tiers={},
    )  # fmt: skip
    page = _plan_edit(admin_client, "legacy@1", is_current=True)
    assert page.status_code == 200
    errors = page.context["adminform"].form.errors["is_current"]
    assert "without a hard cap" in errors[0]
    assert not Plan.objects.get(pk="legacy@1").is_current


def test_terms_saved_as_a_new_version_lead_to_the_new_versions_page(admin_client, tenant):
    """Django's "changed successfully" linked the page of the version edited, which kept
    its terms (an audit)."""
    from tests.factories import subscribe

    subscribe(tenant, "pro")  # pro@1 in use: new terms are a new version
    saved = _plan_edit(admin_client, "pro@1", included_inputs=123_000)
    new = Plan.objects.get(slug="pro", is_current=True)
    assert new.pk != "pro@1" and new.included_inputs == 123_000
    assert saved.status_code == 302
    assert saved["Location"] == f"/admin/plans/plan/{new.pk.replace('@', '_40')}/change/"
    assert Plan.objects.get(pk="pro@1").included_inputs != 123_000


def test_a_hard_cap_of_no_inputs_is_refused(admin_client):
    """0 was taken as a cap, and every call of the plan's tenants was refused past it."""
    page = _plan_edit(admin_client, "free@1", monthly_hard_cap=0)
    assert page.status_code == 200  # the form again
    assert "leave it empty for no cap" in str(page.context["adminform"].form.errors)
    assert Plan.objects.get(slug="free", is_current=True).monthly_hard_cap == 10_000
    assert _plan_edit(admin_client, "free@1", monthly_hard_cap=1).status_code == 302
