"""What operators can do in the Django admin, as they would find it: view-only staff see but
do not change (no suspend, no revoke), what the API and the workers write is never added,
edited or deleted there, the ledger's list page costs the same at any size, and a model
added there is one the workers can serve."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
import redis
from django.contrib.admin.sites import site
from django.contrib.admin.utils import quote
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from apikeys.models import ApiKey
from apikeys.services import hash_secret
from core.admin import CappedCountPaginator, ViewOnlyAdmin
from inference.models import AIModel
from metering.models import UsageRecord
from tenants.models import Tenant
from tests.factories import TenantFactory, bearer, make_key, staff_client, subscribe

pytestmark = pytest.mark.django_db


def _run_action(client: Client, path: str, action: str, pk: str) -> Any:
    return client.post(path, {"action": action, "_selected_action": [pk], "index": 0}, follow=True)


# -- 1. actions that change state need the change permission ------------------------------


def test_view_only_staff_cannot_suspend_a_tenant():
    tenant = TenantFactory()
    secret = make_key(tenant, ["inference"])
    viewer = staff_client("tenants.view_tenant")
    page = viewer.get("/admin/tenants/tenant/")
    assert page.status_code == 200 and tenant.name in page.content.decode()
    assert "Suspend selected tenants" not in page.content.decode()

    response = _run_action(viewer, "/admin/tenants/tenant/", "suspend", tenant.pk)
    assert "tenant(s) suspended" not in response.content.decode()
    tenant.refresh_from_db()
    assert tenant.status == Tenant.Status.ACTIVE
    assert bearer(secret).get("/v1/models").status_code == 200


def test_staff_with_the_change_permission_can_suspend_and_reactivate():
    tenant = TenantFactory()
    secret = make_key(tenant, ["inference"])
    operator = staff_client("tenants.view_tenant", "tenants.change_tenant")
    assert "Suspend selected tenants" in operator.get("/admin/tenants/tenant/").content.decode()

    response = _run_action(operator, "/admin/tenants/tenant/", "suspend", tenant.pk)
    assert "1 tenant(s) suspended." in response.content.decode()
    refused = bearer(secret).get("/v1/models")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "tenant_suspended"

    response = _run_action(operator, "/admin/tenants/tenant/", "reactivate", tenant.pk)
    assert "1 tenant(s) reactivated." in response.content.decode()
    assert bearer(secret).get("/v1/models").status_code == 200


def test_view_only_staff_cannot_revoke_a_key_and_staff_who_may_change_keys_can():
    tenant = TenantFactory()
    secret = make_key(tenant, ["inference"])
    key_id = ApiKey.objects.unscoped().get(secret_hash=hash_secret(secret)).pk

    viewer = staff_client("apikeys.view_apikey")
    page = viewer.get("/admin/apikeys/apikey/")
    assert page.status_code == 200 and key_id in page.content.decode()
    assert "Revoke selected keys" not in page.content.decode()
    _run_action(viewer, "/admin/apikeys/apikey/", "revoke", key_id)
    assert ApiKey.objects.unscoped().get(pk=key_id).revoked_at is None
    assert bearer(secret).get("/v1/models").status_code == 200

    operator = staff_client("apikeys.view_apikey", "apikeys.change_apikey")
    _run_action(operator, "/admin/apikeys/apikey/", "revoke", key_id)
    assert ApiKey.objects.unscoped().get(pk=key_id).revoked_at is not None
    refused = bearer(secret).get("/v1/models")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "api_key_revoked"


def _redis_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Redis that key generations are set in, at a port nothing listens on."""
    down = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    monkeypatch.setattr("apikeys.generations.redis_client", lambda: down)


def test_a_suspension_while_redis_is_down_is_refused_on_the_page_not_a_500(monkeypatch):
    """Suspending needs every API process told (a key generation in Redis): without Redis
    the operator reads why on the page, and nothing changed, from the list's action or
    from the tenant's form."""
    tenant = TenantFactory()
    secret = make_key(tenant, ["inference"])
    operator = staff_client("tenants.view_tenant", "tenants.change_tenant")
    _redis_down(monkeypatch)

    response = _run_action(operator, "/admin/tenants/tenant/", "suspend", tenant.pk)
    assert response.status_code == 200
    assert response.redirect_chain == [("/admin/tenants/tenant/", 302)]
    page = response.content.decode()
    assert "Nothing was changed: The key store is unreachable" in page
    assert "tenant(s) suspended" not in page

    form = {"name": tenant.name, "slug": tenant.slug, "status": Tenant.Status.SUSPENDED}
    response = operator.post(_admin_url(tenant, "change"), form, follow=True)
    assert response.status_code == 200
    assert "Nothing was changed: The key store is unreachable" in response.content.decode()
    tenant.refresh_from_db()
    assert tenant.status == Tenant.Status.ACTIVE

    monkeypatch.undo()
    assert bearer(secret).get("/v1/models").status_code == 200
    response = _run_action(operator, "/admin/tenants/tenant/", "suspend", tenant.pk)
    assert "1 tenant(s) suspended." in response.content.decode()


def test_delete_selected_while_redis_is_down_deletes_nothing_and_logs_no_deletion(monkeypatch):
    """Django's *Delete selected* writes its history before it deletes: the review found a
    "deleted" history entry left behind by a deletion that Redis being down rolled back."""
    from django.contrib.admin.models import DELETION, LogEntry

    tenant = TenantFactory()
    make_key(tenant, ["inference"])  # its keys' generations are what need Redis
    operator = staff_client(superuser=True)
    _redis_down(monkeypatch)
    form = {"action": "delete_selected", "_selected_action": [tenant.pk], "post": "yes", "index": 0}
    response = operator.post("/admin/tenants/tenant/", form, follow=True)
    assert "Nothing was changed: The key store is unreachable" in response.content.decode()
    assert Tenant.objects.filter(pk=tenant.pk).exists()
    assert not LogEntry.objects.filter(action_flag=DELETION).exists()

    monkeypatch.undo()
    operator.post("/admin/tenants/tenant/", form, follow=True)
    assert not Tenant.objects.filter(pk=tenant.pk).exists()
    assert LogEntry.objects.filter(action_flag=DELETION).count() == 1


def test_a_key_revoked_while_redis_is_down_stays_unrevoked_and_the_page_says_so(monkeypatch):
    tenant = TenantFactory()
    secret = make_key(tenant, ["inference"])
    key_id = ApiKey.objects.unscoped().get(secret_hash=hash_secret(secret)).pk
    operator = staff_client("apikeys.view_apikey", "apikeys.change_apikey", "apikeys.delete_apikey")
    _redis_down(monkeypatch)

    response = _run_action(operator, "/admin/apikeys/apikey/", "revoke", key_id)
    assert "Nothing was changed: The key store is unreachable" in response.content.decode()
    key = ApiKey.objects.unscoped().get(pk=key_id)
    response = operator.post(_admin_url(key, "delete"), {"post": "yes"}, follow=True)
    assert response.status_code == 200
    assert "Nothing was changed: The key store is unreachable" in response.content.decode()
    assert ApiKey.objects.unscoped().get(pk=key_id).revoked_at is None

    monkeypatch.undo()
    assert bearer(secret).get("/v1/models").status_code == 200


# -- 2. view-only admins: no add, no change, no delete ------------------------------------


def _rows(tenant: Tenant) -> dict[type, Any]:
    """One row of each model a ViewOnlyAdmin shows."""
    from billing.models import (
        BillingPeriod,
        Invoice,
        Reconciliation,
        StripeEvent,
        UsageChargePush,
    )
    from datasets.models import Dataset
    from economics.models import UsageRollup
    from finetuning.models import FineTuneEvent, FineTuneJob

    now = datetime.now(UTC)
    subscription = subscribe(tenant, "free")
    dataset = Dataset.objects.create(tenant=tenant, bytes=1, status="valid", raw_file="x")
    job = FineTuneJob.objects.create(
        tenant=tenant, api_key_id="key_x", base_model="minilm-l6", method="head",
        training_dataset=dataset, training_file="x", status="queued",
    )  # fmt: skip
    period = {"tenant": tenant, "period_start": now - timedelta(days=30), "period_end": now}
    rollup = {"day": date.today(), "tenant": tenant, "model": "minilm-l6", "kind": "inference",
              "livemode": True, "plan_id": "free@1", "requests": 1, "inputs": 1}  # fmt: skip
    push = {"idempotency_key": "push-1", "line": "overage", "description": "Overage",
            "amount": 100, "currency": "usd", **period}  # fmt: skip
    return {
        FineTuneJob: job,
        FineTuneEvent: FineTuneEvent.objects.create(
            tenant=tenant, job=job, message="queued", created_at=now
        ),
        UsageRollup: UsageRollup.objects.create(**rollup),
        UsageRecord: _ledger_rows(tenant, 1)[0],
        type(subscription): subscription,
        BillingPeriod: BillingPeriod.objects.create(
            tenant=tenant, start=now - timedelta(days=1), end=now, plan_id="free@1"
        ),
        StripeEvent: StripeEvent.objects.create(id="evt_1", type="invoice.paid", payload={}),
        Invoice: Invoice.objects.create(
            id="in_1", tenant=tenant, status="paid", currency="usd", created_at=now
        ),
        UsageChargePush: UsageChargePush.objects.create(**push),
        Reconciliation: Reconciliation.objects.create(
            ledger_amount=100, stripe_amount=90, difference=10, **period
        ),
    }


def _admin_url(obj: Any, view: str = "") -> str:
    opts = obj._meta
    base = f"/admin/{opts.app_label}/{opts.model_name}/"
    return f"{base}{quote(obj.pk)}/{view}/" if view else base


def test_view_only_admins_show_their_rows_and_never_delete_them(admin_client):
    view_only = {model for model, each in site._registry.items() if isinstance(each, ViewOnlyAdmin)}
    rows = _rows(TenantFactory())
    assert view_only <= set(rows), f"add a row for {view_only - set(rows)}"
    for model in view_only:
        row = rows[model]
        changelist = admin_client.get(_admin_url(row))
        assert changelist.status_code == 200, model
        assert 'value="delete_selected"' not in changelist.content.decode(), model
        assert f'href="{_admin_url(row)}add/"' not in changelist.content.decode(), model
        detail = admin_client.get(_admin_url(row, "change"))
        assert detail.status_code == 200, model
        assert _admin_url(row, "delete") not in detail.content.decode(), model
        assert admin_client.post(_admin_url(row, "delete"), {"post": "yes"}).status_code == 403
        assert admin_client.post(_admin_url(row, "change"), {}).status_code == 403, model
        admin_client.post(
            _admin_url(row), {"action": "delete_selected", "_selected_action": [row.pk],
                              "index": 0, "post": "yes"},
        )  # fmt: skip
        assert type(row)._base_manager.filter(pk=row.pk).exists(), model


def test_a_deleted_rollup_cannot_unlock_a_plans_terms(admin_client):
    """The audit's path: deleting the only rollup priced on a plan made the plan look unused,
    so its terms could be edited in place."""
    from economics.models import UsageRollup

    rollup = _rows(TenantFactory())[UsageRollup]
    assert admin_client.post(_admin_url(rollup, "delete"), {"post": "yes"}).status_code == 403
    assert UsageRollup.objects.unscoped().filter(pk=rollup.pk).exists()


# -- 3. the ledger's list page costs the same at any size ---------------------------------


def _ledger_rows(tenant: Tenant, count: int, start: int = 0, **fields: Any) -> list[UsageRecord]:
    now = datetime.now(UTC)
    return UsageRecord.objects.bulk_create(
        UsageRecord(
            event_id=f"req_{start + i}", kind="inference", tenant=tenant, api_key_id="key_x",
            model=fields.get("model", "minilm-l6"), inputs=1, tokens=5, compute_ms=1.0,
            occurred_at=fields.get("occurred_at", now - timedelta(seconds=i)),
        )
        for i in range(count)
    )  # fmt: skip


def _listed(body: str, event_id: str) -> bool:
    return f">{event_id}</a>" in body


def _ledger_page(client: Client, query: str = "") -> tuple[Any, list[str]]:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(f"/admin/metering/usagerecord/{query}")
    assert response.status_code == 200
    ledger = [q["sql"] for q in queries.captured_queries if "metering_usagerecord" in q["sql"]]
    return response, ledger


def test_the_ledger_page_reads_one_page_and_a_capped_count_at_any_size(admin_client):
    tenant = TenantFactory()
    _ledger_rows(tenant, 5)
    _, small = _ledger_page(admin_client)
    _ledger_rows(tenant, 250, start=5)
    response, large = _ledger_page(admin_client)
    assert len(large) == len(small) == 2, large  # the capped count and the page's rows
    for sql in large:
        upper = sql.upper()
        assert "DISTINCT" not in upper and "MIN(" not in upper and "MAX(" not in upper, sql
        assert "COUNT(" not in upper or "LIMIT" in upper, f"an uncapped count: {sql}"
    body = response.content.decode()
    assert _listed(body, "req_254") and not _listed(body, "req_0")  # newest first, 100 a page
    assert "255 usage records" in body


def test_the_ledger_page_says_when_its_count_stops_at_the_cap(admin_client, monkeypatch):
    monkeypatch.setattr(CappedCountPaginator, "cap", 120)
    _ledger_rows(TenantFactory(), 250)
    response, _ = _ledger_page(admin_client)
    assert "More than 120 usage records match" in response.content.decode()
    assert admin_client.get("/admin/metering/usagerecord/?p=2").status_code == 200
    _ledger_rows(TenantFactory(), 10, start=1000)
    response, _ = _ledger_page(admin_client, "?q=req_1005")
    assert "More than" not in response.content.decode()


def test_the_ledger_page_filters_by_date_kind_and_model_without_reading_every_row(admin_client):
    tenant = TenantFactory()
    _ledger_rows(tenant, 3)
    old = datetime.now(UTC) - timedelta(days=40)
    _ledger_rows(tenant, 2, start=100, occurred_at=old, model="ft:minilm-l6:x:ftjob_1")
    page, _ = _ledger_page(admin_client)
    assert "Past 7 days" in page.content.decode()

    # The "Past 7 days" link's query.
    week_ago, tomorrow = (datetime.now(UTC) + timedelta(days=days) for days in (-7, 1))
    query = urlencode({"occurred_at__gte": week_ago, "occurred_at__lt": tomorrow})
    week, queries = _ledger_page(admin_client, f"?{query}")
    assert _listed(week.text, "req_0") and not _listed(week.text, "req_100")
    assert not any("DISTINCT" in sql.upper() for sql in queries)

    fine_tuned = "ft:minilm-l6:x:ftjob_1"
    # (The search tries a word as a model only if the registry knows it: metering.admin.)
    AIModel.objects.create(id=fine_tuned, tenant=tenant, kind="fine_tuned", base_model="minilm-l6")
    for query in (f"?model={fine_tuned}", f"?q={fine_tuned}"):
        one_model, _ = _ledger_page(admin_client, query)
        assert _listed(one_model.text, "req_101") and not _listed(one_model.text, "req_0")
    fine_tunes, _ = _ledger_page(admin_client, "?kind__exact=fine_tune")
    assert not _listed(fine_tunes.text, "req_0")


# -- 4. adding a model ----------------------------------------------------------------------


def _model_form(**fields: str) -> dict[str, str]:
    return {"id": "support-base", "kind": "base", "base_model": "minilm-l6", "status": "ready",
            "description": "", "artifact": "", **fields}  # fmt: skip


def test_an_operator_adds_a_model_in_the_admin(admin_client):
    page = admin_client.get("/admin/inference/aimodel/add/")
    assert page.status_code == 200
    assert '<option value="minilm-l6-int8">' in page.content.decode()

    response = admin_client.post("/admin/inference/aimodel/add/", _model_form())
    assert response.status_code == 302, response.content.decode()[:2000]
    model = AIModel.objects.unscoped().get(pk="support-base")
    assert (model.base_model, model.kind, model.tenant_id) == ("minilm-l6", "base", None)

    # Its id is taken now; and once it exists, it is edited without its id.
    again = admin_client.post("/admin/inference/aimodel/add/", _model_form())
    assert again.status_code == 200 and "Model with this Id already exists." in again.text
    change = admin_client.post(
        "/admin/inference/aimodel/support-base/change/",
        _model_form(id="renamed", status="disabled"),
    )
    assert change.status_code == 302, change.content.decode()[:2000]
    assert AIModel.objects.unscoped().get(pk="support-base").status == "disabled"
    assert not AIModel.objects.unscoped().filter(pk="renamed").exists()


def test_a_base_model_the_workers_do_not_serve_is_a_form_error(admin_client):
    wrong = _model_form(base_model="minilm-l7")
    response = admin_client.post("/admin/inference/aimodel/add/", wrong)
    assert response.status_code == 200
    assert "Select a valid choice. minilm-l7 is not one of the available choices." in (
        response.content.decode()
    )
    assert not AIModel.objects.unscoped().filter(pk="support-base").exists()


def test_a_date_drill_down_past_year_9999_is_the_wrong_lookup_page_not_a_500(admin_client):
    """Django's date hierarchy catches ValueError alone: 9999 reaches into year 10,000 and
    2147483648 overflows a date (an audit found the 500s)."""
    for year in ("9999", "2147483648", "9" * 20):
        response = admin_client.get(f"/admin/economics/usagerollup/?day__year={year}")
        assert response.status_code == 302 and response["Location"].endswith("?e=1"), year
    assert admin_client.get("/admin/economics/usagerollup/?day__year=2026").status_code == 200


def test_models_are_switched_off_or_marked_deleted_never_removed(admin_client):
    """One click removed minilm-l6: every tenant's classifications on it were a 404 until
    manage.py seed (an audit)."""
    page = admin_client.get(f"/admin/inference/aimodel/{quote('minilm-l6')}/delete/")
    assert page.status_code == 403
    listing = admin_client.get("/admin/inference/aimodel/")
    assert b'value="delete_selected"' not in listing.content
    assert AIModel.objects.unscoped().filter(pk="minilm-l6").exists()
