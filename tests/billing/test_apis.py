"""The billing API's contract: shapes, bad input, scopes and tenant isolation."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from billing.models import Invoice
from plans.models import Plan

pytestmark = pytest.mark.django_db


def test_plans_are_the_public_catalogue(tenant, client_for):
    body = client_for(tenant, ["billing"]).get("/v1/plans").json()
    assert body["object"] == "list" and body["has_more"] is False
    plans = {plan["id"]: plan for plan in body["data"]}
    assert list(plans) == ["free", "pro", "scale"]
    pro = plans["pro"]
    assert pro["amount"] == 4900 and pro["currency"] == "usd" and pro["interval"] == "month"
    assert pro["overage"]["standard"]["tiers"][0] == {
        "up_to": 1_000_000,
        "unit_amount_decimal": "40",
    }
    assert pro["overage"]["int8"]["tiers"][-1]["up_to"] is None
    assert pro["finetune_unit_amount_decimal"] == "0.5"
    # Whether the result cache's answers are billed, which GET /v1/usage's `cached` counts.
    assert pro["cached_inputs_billed"] is True
    from billing.serializers import _decimal

    assert [_decimal(x) for x in (Decimal("1E+1"), "10.000", 7, "0.50")] == ["10", "10", "7", "0.5"]
    assert pro["limits"]["monthly_inputs_cap"] is None
    assert plans["free"]["limits"]["monthly_inputs_cap"] == 10_000
    assert plans["free"]["features"] == {
        "fine_tuning": False,
        "max_fine_tuned_models": 0,
        "lora": False,
    }


def test_plans_are_a_cursor_list_in_catalogue_order(tenant, client_for):
    # As cheap as pro: plans of one price follow by id. A plan not listed is no cursor.
    Plan.objects.create(id="growth@1", slug="growth", name="Growth", base_fee=4900)
    Plan.objects.create(id="hidden@1", slug="hidden", name="Hidden", base_fee=100, public=False)
    client = client_for(tenant, ["billing"])
    whole = client.get("/v1/plans").json()
    assert [p["id"] for p in whole["data"]] == ["free", "growth", "pro", "scale"]
    assert whole["has_more"] is False
    pages, after = [], None
    while after is None or pages[-1]["has_more"]:
        query = {"limit": 1} if after is None else {"limit": 1, "starting_after": after}
        response = client.get("/v1/plans", query)
        assert response.status_code == 200, response.content
        pages.append(response.json())
        after = pages[-1]["data"][-1]["id"]
    assert [p["data"][0] for p in pages] == whole["data"]
    assert [p["has_more"] for p in pages] == [True, True, True, False]
    first = client.get("/v1/plans", {"limit": 3}).json()
    assert [p["id"] for p in first["data"]] == ["free", "growth", "pro"] and first["has_more"]
    assert client.get("/v1/plans", {"starting_after": "scale"}).json() == {
        "object": "list", "data": [], "has_more": False
    }  # fmt: skip


@pytest.mark.parametrize(
    ("query", "status", "code", "param"),
    [
        ("limit=0", 400, "invalid_parameter", "limit"),
        ("limit=101", 400, "invalid_parameter", "limit"),
        ("limit=abc", 400, "invalid_parameter", "limit"),
        ("limit=", 400, "invalid_parameter", "limit"),
        ("limit=%2B5", 400, "invalid_parameter", "limit"),
        ("limit=1&limit=2", 400, "duplicate_parameter", "limit"),
        ("starting_after=", 400, "invalid_parameter", "starting_after"),
        ("starting_after=gold", 404, "resource_missing", "starting_after"),
        ("starting_after=hidden", 404, "resource_missing", "starting_after"),
        ("starting_after=pro%401", 404, "resource_missing", "starting_after"),
        ("starting_after=pro%00", 404, "resource_missing", "starting_after"),
        ("ending_before=pro", 400, "unknown_parameter", "ending_before"),
    ],
)
def test_plans_refuse_a_bad_cursor_as_every_list_does(
    tenant, client_for, query, status, code, param
):
    Plan.objects.create(id="hidden@1", slug="hidden", name="Hidden", public=False)
    client = client_for(tenant, ["admin"])
    for path in ("/v1/plans", "/v1/api-keys"):  # the same answer as another list's
        response = client.get(f"{path}?{query}")
        assert response.status_code == status, (path, response.content)
        error = response.json()["error"]
        assert (error["code"], error["param"]) == (code, param), path


def test_plans_document_their_cursor_parameters(client):
    schema = client.get("/v1/openapi.json").json()
    parameters = {p["name"]: p for p in schema["paths"]["/v1/plans"]["get"]["parameters"]}
    assert parameters["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 100}
    assert parameters["starting_after"]["schema"]["type"] == "string"
    assert {p["in"] for p in parameters.values()} == {"query"}


def test_a_new_tenant_is_on_free_for_this_calendar_month(tenant, client_for):
    body = client_for(tenant, ["billing"]).get("/v1/subscription").json()
    assert body["object"] == "subscription"
    assert body["plan"]["id"] == "free" and body["status"] == "active"
    assert body["payment_blocked"] is False and body["past_due_since"] is None
    start = datetime.fromisoformat(body["current_period_start"].replace("Z", "+00:00"))
    now = datetime.now(UTC)
    assert (start.year, start.month, start.day, start.hour) == (now.year, now.month, 1, 0)


def test_a_free_month_rolls_over_into_this_one_and_is_kept(tenant, client_for):
    from billing.models import BillingPeriod, Subscription

    api = client_for(tenant, ["billing"])
    api.get("/v1/subscription")
    october = (datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC))
    Subscription.objects.for_tenant(tenant).update(
        current_period_start=october[0], current_period_end=october[1]
    )
    body = api.get("/v1/subscription").json()
    start = datetime.fromisoformat(body["current_period_start"].replace("Z", "+00:00"))
    now = datetime.now(UTC)
    assert (start.year, start.month, start.day) == (now.year, now.month, 1)
    kept = BillingPeriod.objects.for_tenant(tenant).order_by("start")
    assert kept.last().start == start and kept.last().plan_id == "free@1"


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({}, 400, "missing_parameter", "plan"),
        ({"plan": 5}, 400, "invalid_parameter", "plan"),
        ({"plan": None}, 400, "invalid_parameter", "plan"),
        ({"plan": ["pro"]}, 400, "invalid_parameter", "plan"),
        ({"plan": "gold"}, 404, "resource_missing", "plan"),
        ({"plan": "pro", "coupon": "x"}, 400, "unknown_parameter", "coupon"),
        ([], 400, "invalid_request_body", None),
    ],
)
def test_subscription_change_rejects_bad_input(tenant, client_for, body, status, code, param):
    response = client_for(tenant, ["billing"]).post("/v1/subscription", body, format="json")
    assert response.status_code == status
    error = response.json()["error"]
    kind = "not_found" if status == 404 else "invalid_request"
    assert (error["type"], error["code"], error["param"]) == (kind, code, param)
    assert client_for(tenant, ["billing"]).get("/v1/subscription").json()["plan"]["id"] == "free"


def test_subscription_change_rejects_a_body_that_is_not_json(tenant, client_for):
    response = client_for(tenant, ["billing"]).post(
        "/v1/subscription", "plan=pro", content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_asking_for_the_current_plan_changes_nothing(tenant, client_for):
    client = client_for(tenant, ["billing"])
    before = client.get("/v1/subscription").json()
    response = client.post("/v1/subscription", {"plan": "free"}, format="json")
    assert response.status_code == 200 and response.json() == before


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/v1/plans"),
        ("get", "/v1/subscription"),
        ("post", "/v1/subscription"),
        ("get", "/v1/invoices"),
        ("get", "/v1/invoices/upcoming"),
    ],
)
def test_billing_scope_is_required(tenant, client_for, method, path):
    response = getattr(client_for(tenant, ["inference", "training"]), method)(
        path, {"plan": "pro"} if method == "post" else None, format="json"
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "insufficient_scope"
    assert client_for(tenant, ["admin"]).get(path).status_code in (200, 405)


def _invoice(tenant, invoice_id, created):
    return Invoice.objects.create(
        id=invoice_id, tenant=tenant, status="paid", currency="usd", amount_due=4900,
        amount_paid=4900, total=4900, created_at=created,
    )  # fmt: skip


def test_invoices_are_a_cursor_list_of_the_tenants_own(tenant, other_tenant, client_for):
    for day in range(1, 4):
        _invoice(tenant, f"in_a{day}", datetime(2026, 8, day, tzinfo=UTC))
    _invoice(other_tenant, "in_b1", datetime(2026, 8, 5, tzinfo=UTC))
    client = client_for(tenant, ["billing"])
    first = client.get("/v1/invoices", {"limit": 2}).json()
    assert [i["id"] for i in first["data"]] == ["in_a3", "in_a2"] and first["has_more"]
    second = client.get("/v1/invoices", {"limit": 2, "starting_after": "in_a2"}).json()
    assert [i["id"] for i in second["data"]] == ["in_a1"] and not second["has_more"]
    assert second["data"][0]["total"] == 4900 and second["data"][0]["object"] == "invoice"
    # Another tenant's invoice is neither listed nor usable as a cursor.
    response = client.get("/v1/invoices", {"starting_after": "in_b1"})
    assert response.status_code == 404
    other = client_for(other_tenant, ["billing"]).get("/v1/invoices").json()
    assert [i["id"] for i in other["data"]] == ["in_b1"]
    assert client.get("/v1/invoices", {"limit": 0}).status_code == 400


def test_upcoming_invoice_on_free_has_no_charges(tenant, client_for):
    body = client_for(tenant, ["billing"]).get("/v1/invoices/upcoming").json()
    assert body["object"] == "upcoming_invoice" and body["plan"] == "free"
    assert body["lines"] == [] and body["total"] == 0


def test_a_test_mode_key_sees_no_live_invoices(tenant, client_for):
    """Test mode is never billed: a test key lists no invoices and its upcoming invoice has
    no lines, where a live key of the same tenant sees the live ones."""
    from tests.factories import subscribe

    subscribe(tenant, "pro")
    _invoice(tenant, "in_live", datetime(2026, 8, 1, tzinfo=UTC))
    live = client_for(tenant, ["billing"])
    test = client_for(tenant, ["billing"], mode="test")
    assert [i["id"] for i in live.get("/v1/invoices").json()["data"]] == ["in_live"]
    assert live.get("/v1/invoices/upcoming").json()["total"] == 4900  # the base fee
    listed = test.get("/v1/invoices").json()
    assert listed["data"] == [] and listed["has_more"] is False
    assert test.get("/v1/invoices", {"starting_after": "in_live"}).status_code == 404
    upcoming = test.get("/v1/invoices/upcoming").json()
    assert upcoming["plan"] == "pro" and upcoming["currency"] == "usd"
    assert upcoming["lines"] == [] and upcoming["total"] == upcoming["amount_due"] == 0
