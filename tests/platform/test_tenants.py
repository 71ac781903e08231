"""Operators and tenants: ``manage.py create_tenant`` refuses what the admin would refuse
and never changes a slug it was given; suspending or reactivating a tenant applies on the
next request in every API process, as a change to a key does."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from io import StringIO

import pytest
from django.contrib.admin.utils import quote
from django.core.management import CommandError, call_command
from django.utils import timezone
from rest_framework.test import APIClient

from apikeys.models import ApiKey
from apikeys.services import hash_secret
from tenants.models import Tenant
from tests.factories import TenantFactory, make_key

pytestmark = pytest.mark.django_db


def _create(*args: str) -> tuple[list[str], str]:
    out, err = StringIO(), StringIO()
    call_command("create_tenant", *args, stdout=out, stderr=err)
    return out.getvalue().strip().splitlines(), err.getvalue()


def _works(secret: str) -> bool:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client.get("/v1/api-keys").status_code == 200


def test_create_tenant_prints_the_secret_last_and_says_nothing_on_stderr():
    lines, err = _create("Globex Inc", "--slug", "globex")
    assert err == ""
    tenant = Tenant.objects.get(slug="globex")
    assert tenant.name == "Globex Inc" and tenant.id in lines[0]
    assert lines[-1].startswith("sk_live_") and _works(lines[-1])


@pytest.mark.parametrize(
    ("name", "message"),
    [("", "must not be blank"), ("   ", "must not be blank"), ("x" * 201, "201 characters")],
)
def test_create_tenant_refuses_a_name_the_admin_would_refuse(name, message):
    with pytest.raises(CommandError, match=message):
        _create(name)
    assert not Tenant.objects.exists() and not ApiKey.objects.unscoped().exists()


def test_a_name_of_exactly_the_column_length_is_kept():
    lines, _ = _create("y" * 200)
    assert Tenant.objects.get().name == "y" * 200 and _works(lines[-1])


@pytest.mark.parametrize(
    ("slug", "message"),
    [
        ("bad slug!", "'bad slug!' is not a valid slug.*'bad-slug'"),
        ("Acme", "not a valid slug.*'acme'"),
        ("", "not a valid slug"),
        ("a" * 65, "at most 64 characters"),
    ],
)
def test_create_tenant_refuses_an_invalid_slug_rather_than_change_it(slug, message):
    with pytest.raises(CommandError, match=message):
        _create("Other", "--slug", slug)
    assert not Tenant.objects.exists()


def test_create_tenant_refuses_a_slug_that_is_taken():
    taken = TenantFactory(slug="acme")
    with pytest.raises(CommandError, match=f"'acme' is taken by tenant {taken.id}"):
        _create("Other", "--slug", "acme")
    assert list(Tenant.objects.values_list("slug", flat=True)) == ["acme"]
    assert not ApiKey.objects.unscoped().exists()


def test_a_derived_slug_that_had_to_change_is_said_on_stderr():
    TenantFactory(name="Someone", slug="acme")
    lines, err = _create("Acme")
    tenant = Tenant.objects.get(name="Acme")
    assert tenant.slug.startswith("acme-") and tenant.slug in lines[0]
    assert f"the slug is '{tenant.slug}': 'acme' is taken" in err
    assert _works(lines[-1])
    # A name with nothing a slug can use.
    lines, err = _create("!!!")
    assert "the slug is 'tenant'" in err and "no letters or digits" in err
    assert _works(lines[-1])


def test_a_duplicate_name_is_allowed_with_a_warning():
    first = TenantFactory(name="Acme", slug="acme")
    lines, err = _create("acme", "--slug", "acme-two")
    assert "warning: another tenant is already named" in err
    assert Tenant.objects.filter(name__iexact="acme").count() == 2
    assert first.id not in lines[0] and _works(lines[-1])


def test_create_tenant_with_test_mints_a_test_key():
    lines, _ = _create("Test Co", "--test")
    assert lines[-1].startswith("sk_test_")
    assert ApiKey.objects.unscoped().get(secret_hash=hash_secret(lines[-1])).mode == "test"


# -- suspension: the next request, in every process ----------------------------------------


@contextmanager
def _in_another_process() -> Iterator[None]:
    """What the block does runs in "this" process; afterwards, the process's caches are put
    back as they were before it, as another API process's would be: it still holds the key
    row and the tenant it read before, and has been told nothing."""
    from apikeys import services
    from tenants import selectors

    keys, tenants = dict(services._key_cache), dict(selectors._cache)
    yield
    services._key_cache.clear()
    services._key_cache.update(keys)
    selectors._cache.clear()
    selectors._cache.update(tenants)


def _cached_client(secret: str) -> APIClient:
    from apikeys import services

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    for _ in range(2):  # the first gives the key a generation, the second caches the row
        assert client.get("/v1/models").status_code == 200
    assert hash_secret(secret) in services._key_cache
    return client


def _set_status_in_admin(admin_client, tenant: Tenant, status: str, how: str) -> None:
    if how == "form":
        response = admin_client.post(
            f"/admin/tenants/tenant/{quote(tenant.pk)}/change/",
            {"name": tenant.name, "slug": tenant.slug, "status": status},
        )
    else:
        action = "suspend" if status == Tenant.Status.SUSPENDED else "reactivate"
        response = admin_client.post(
            "/admin/tenants/tenant/", {"action": action, "_selected_action": [tenant.pk]}
        )
    assert response.status_code == 302
    tenant.refresh_from_db()
    assert tenant.status == status


@pytest.mark.parametrize("how", ["form", "action"])
def test_suspension_in_the_admin_applies_on_the_next_request_in_every_process(
    admin_client, monkeypatch, how
):
    from tenants import selectors

    # Only the generation can tell a process: its copy of the tenant would last the test.
    monkeypatch.setattr(selectors, "TENANT_CONTEXT_TTL_S", 3600.0)
    tenant = TenantFactory()
    secret = make_key(tenant, ["inference"])
    client = _cached_client(secret)
    with _in_another_process():
        _set_status_in_admin(admin_client, tenant, Tenant.Status.SUSPENDED, how)
    response = client.get("/v1/models")
    assert response.status_code == 403, response.json()
    assert response.json()["error"]["code"] == "tenant_suspended"
    assert client.post("/v1/classify", {}, format="json").status_code == 403
    # Reactivated: through again on the next request, though this process holds the key
    # and the tenant as they were while suspended.
    with _in_another_process():
        _set_status_in_admin(admin_client, tenant, Tenant.Status.ACTIVE, how)
    assert client.get("/v1/models").status_code == 200
    # And suspended again, from a key this process had not cached: refused at once too.
    other = make_key(tenant, ["inference"])
    with _in_another_process():
        _set_status_in_admin(admin_client, tenant, Tenant.Status.SUSPENDED, how)
    for each in (other, secret):
        refused = APIClient()
        refused.credentials(HTTP_AUTHORIZATION=f"Bearer {each}")
        assert refused.get("/v1/models").json()["error"]["code"] == "tenant_suspended"


def test_the_suspend_action_says_what_it_did(admin_client):
    tenants = [TenantFactory(), TenantFactory(status=Tenant.Status.SUSPENDED)]
    response = admin_client.post(
        "/admin/tenants/tenant/",
        {"action": "suspend", "_selected_action": [t.pk for t in tenants]},
        follow=True,
    )
    assert "1 tenant(s) suspended." in response.content.decode()


def test_the_tenant_form_refuses_a_slug_create_tenant_refuses(admin_client):
    """``DELTA`` was saved: ``create_api_key delta`` and the ledger's search then missed it."""
    tenant = TenantFactory()
    page = f"/admin/tenants/tenant/{tenant.pk}/change/"
    form = {"name": tenant.name, "status": tenant.status}
    refused = admin_client.post(page, {**form, "slug": "DELTA"})
    assert refused.status_code == 200 and "is not a valid slug" in refused.content.decode()
    assert Tenant.objects.get(pk=tenant.pk).slug == tenant.slug
    assert admin_client.post(page, {**form, "slug": "delta"}).status_code == 302
    assert Tenant.objects.get(pk=tenant.pk).slug == "delta"


def test_deleting_a_tenant_with_a_ledger_says_why_it_cannot_be(admin_client):
    """The page said the superuser lacked a permission that no account has."""
    from tests.factories import ledger_row

    tenant = TenantFactory()
    ledger_row(event_id="req_del1", kind="inference", tenant=tenant, api_key_id="key_x",
               livemode=True, model="minilm-l6", inputs=1, tokens=5, compute_ms=1.0,
               occurred_at=timezone.now())  # fmt: skip
    page = admin_client.get(f"/admin/tenants/tenant/{tenant.pk}/delete/").content.decode()
    assert "Suspend it instead" in page and "have permission" not in page
    admin_client.post(f"/admin/tenants/tenant/{tenant.pk}/delete/", {"post": "yes"})
    assert Tenant.objects.filter(pk=tenant.pk).exists()


def test_tenant_set_status_service_applies_at_once(monkeypatch):
    from tenants import selectors
    from tenants.services import tenant_set_status

    monkeypatch.setattr(selectors, "TENANT_CONTEXT_TTL_S", 3600.0)
    tenant = TenantFactory()
    client = _cached_client(make_key(tenant, ["inference"]))
    with _in_another_process():
        tenant_set_status(tenant=tenant, status=Tenant.Status.SUSPENDED)
    assert client.get("/v1/models").status_code == 403
