"""The last way in (a tenant has no dashboard, only its live admin keys), and the keys' admin
pages."""

from __future__ import annotations

import contextlib
from datetime import timedelta

import pytest
from django.contrib.admin.utils import quote
from django.core.management import CommandError, call_command
from django.utils import timezone

from apikeys.models import ApiKey
from tests.factories import TenantFactory, bearer, key_id_of, make_key, staff_client

pytestmark = pytest.mark.django_db


# -- the last way in: a tenant has no dashboard, only its live admin keys ------------------


def _own_key_id(tenant) -> str:
    return ApiKey.objects.for_tenant(tenant).get().pk


def _assert_last_admin_key(response, key_id):
    assert response.status_code == 409, response.json()
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("conflict", "last_admin_key", "id")
    assert key_id in error["message"] and "first" in error["message"]


def test_the_last_live_admin_key_cannot_be_deleted(api, tenant, client_for):
    mine = _own_key_id(tenant)  # the fixture's key: the tenant's only one
    _assert_last_admin_key(api.delete(f"/v1/api-keys/{mine}"), mine)
    assert api.get("/v1/api-keys").status_code == 200  # still in
    # Neither a test-mode admin key (it cannot create live keys), an expired or a revoked
    # live one, nor a live key without the admin scope is a way back in.
    make_key(tenant, ["admin"], mode="test")
    expired = api.post("/v1/api-keys", {"scopes": ["admin"]}, format="json").json()
    ApiKey.objects.for_tenant(tenant).filter(pk=expired["id"]).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    revoked = api.post("/v1/api-keys", {"scopes": ["admin"]}, format="json").json()
    assert api.delete(f"/v1/api-keys/{revoked['id']}").status_code == 200
    others = api.post(
        "/v1/api-keys", {"scopes": ["inference", "training", "billing"]}, format="json"
    ).json()
    _assert_last_admin_key(api.delete(f"/v1/api-keys/{mine}"), mine)
    # Deleting the keys that are no way in works as before, the expired admin key included.
    for key_id in (others["id"], expired["id"]):
        assert api.delete(f"/v1/api-keys/{key_id}").status_code == 200, key_id
    # Nor can a test-mode admin key delete the last live one: it never sees live keys.
    assert (
        client_for(tenant, ["admin"], mode="test").delete(f"/v1/api-keys/{mine}").status_code == 404
    )
    assert api.get("/v1/api-keys").status_code == 200


def test_an_admin_key_can_be_deleted_while_another_live_one_exists(api, tenant):
    mine = _own_key_id(tenant)
    spare = api.post("/v1/api-keys", {"scopes": ["admin"]}, format="json").json()
    # The key making the request may delete itself: the spare is a way in.
    deleted = api.delete(f"/v1/api-keys/{mine}")
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert api.get("/v1/api-keys").json()["error"]["code"] == "api_key_revoked"
    spare_client = bearer(spare["secret"])
    assert spare_client.get("/v1/api-keys").status_code == 200
    # Now the spare is the last one.
    _assert_last_admin_key(spare_client.delete(f"/v1/api-keys/{spare['id']}"), spare["id"])


def test_an_expiring_admin_key_cannot_revoke_one_that_outlives_it(api, tenant):
    """It revoked the tenant's permanent admin key (its own expiry then locked the tenant
    out): refused as creating such a key is; the longer-lived key may revoke it."""
    permanent = _own_key_id(tenant)
    soon = (timezone.now() + timedelta(days=30)).isoformat()
    created = api.post("/v1/api-keys", {"scopes": ["admin"], "expires_at": soon}, format="json")
    expiring = bearer(created.json()["secret"])
    refused = expiring.delete(f"/v1/api-keys/{permanent}")
    assert refused.status_code == 403, refused.json()
    assert (refused.json()["error"]["code"], refused.json()["error"]["param"]) == (
        "expiry_escalation",
        "id",
    )
    assert api.get("/v1/models").status_code == 200  # the permanent key still works
    # A key that outlives nothing it revokes is fine; so is the other way round.
    other = api.post("/v1/api-keys", {"scopes": ["inference"]}, format="json").json()["id"]
    assert expiring.delete(f"/v1/api-keys/{other}").status_code == 200
    assert api.delete(f"/v1/api-keys/{created.json()['id']}").status_code == 200


def test_the_admin_key_that_lasts_longest_cannot_revoke_itself_beside_expiring_ones(api, tenant):
    """A permanent admin key revoked itself beside one that expired in seconds: once that one
    had expired, no key could manage keys again (an audit)."""
    permanent = _own_key_id(tenant)
    soon = (timezone.now() + timedelta(days=30)).isoformat()
    api.post("/v1/api-keys", {"scopes": ["admin"], "expires_at": soon}, format="json")
    refused = api.delete(f"/v1/api-keys/{permanent}")
    _assert_last_admin_key(refused, permanent)
    assert "expires by" in refused.json()["error"]["message"]
    assert api.get("/v1/models").status_code == 200  # still in
    # With another that lasts as long, it goes.
    api.post("/v1/api-keys", {"scopes": ["admin"]}, format="json")
    assert api.delete(f"/v1/api-keys/{permanent}").status_code == 200


def test_two_concurrent_deletes_of_the_last_two_admin_keys_leave_one(transactional_db, monkeypatch):
    """Each of the last two live admin keys deletes itself at the same moment: one is
    revoked, the other refused, whichever goes first."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection

    from apikeys import revocation

    tenant = TenantFactory()
    secrets = [make_key(tenant, ["admin"]), make_key(tenant, ["admin"])]
    ids = [key_id_of(secret) for secret in secrets]
    # Hold each revocation, once it has counted the admin keys, until the other has counted
    # too (or a second has passed: the other is then waiting for the first's locks).
    both_counted = threading.Barrier(2, timeout=1)
    count = revocation._refuse_last_admin_key

    def count_then_wait(**kwargs):
        count(**kwargs)
        with contextlib.suppress(threading.BrokenBarrierError):
            both_counted.wait()

    monkeypatch.setattr(revocation, "_refuse_last_admin_key", count_then_wait)

    def delete_itself(n):
        try:
            return bearer(secrets[n]).delete(f"/v1/api-keys/{ids[n]}").status_code
        finally:
            connection.close()

    with ThreadPoolExecutor(2) as pool:
        statuses = sorted(pool.map(delete_itself, range(2)))
    assert statuses == [200, 409]
    left = ApiKey.objects.for_tenant(tenant).filter(revoked_at__isnull=True)
    assert left.count() == 1
    assert bearer(secrets[ids.index(left.get().pk)]).get("/v1/api-keys").status_code == 200


@pytest.mark.parametrize("graces", [(3600, 3600), (0, 3600)])
def test_two_rotations_at_once_never_hand_out_a_dead_secret(transactional_db, monkeypatch, graces):
    """Two rotations of one key at the same moment: one after the other. With grace periods,
    the second is a 409 (one grace period at a time); a grace-0 one ends every old secret.
    Before, both read the key, both answered 200, and the last write won: one caller's new
    secret never worked, or the old secret a grace-0 rotation had ended kept working."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection

    from apikeys import services

    tenant = TenantFactory()
    admin, original = make_key(tenant, ["admin"]), make_key(tenant, ["inference"])
    key_id = key_id_of(original)
    # Hold each rotation, once it has read and checked the key, until the other has too (or
    # a second has passed: the other is then waiting for the first's row lock).
    both_checked = threading.Barrier(2, timeout=1)
    mint = services._mint_secret

    def mint_then_wait(*args):
        with contextlib.suppress(threading.BrokenBarrierError):
            both_checked.wait()
        return mint(*args)

    monkeypatch.setattr(services, "_mint_secret", mint_then_wait)

    def rotate(grace):
        try:
            body = {"grace_period_seconds": grace}
            response = bearer(admin).post(f"/v1/api-keys/{key_id}/rotate", body, format="json")
            return grace, response.status_code, response.json().get("secret")
        finally:
            connection.close()

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(rotate, graces))
    models = {s: bearer(s).get("/v1/models").status_code for _, _, s in answers if s}
    if graces == (3600, 3600):
        assert sorted(status for _, status, _ in answers) == [200, 409]
        assert list(models.values()) == [200]  # the one secret handed out works
        assert bearer(original).get("/v1/models").status_code == 200  # its grace period
    else:
        assert [status for _, status, _ in answers] == [200, 200]
        last = ApiKey.objects.for_tenant(tenant).get(pk=key_id)
        # Whichever went last decides; every secret handed out that it kept works, and
        # the original works only if the grace-3600 one went last.
        working = {s for s, status in models.items() if status == 200}
        assert len(working) == (2 if last.previous_secret_hash else 1)
        original_works = bearer(original).get("/v1/models").status_code == 200
        assert original_works is False  # ended by the grace-0 rotation, before or after


# -- the operator's key form: mode is the secret's, scopes are the four -------------------


def _admin_change(admin_client, key_id: str, **fields):
    data = {"name": "edited", "scopes": ["inference"], "expires_at_0": "", "expires_at_1": ""}
    data.update(fields)
    return admin_client.post(f"/admin/apikeys/apikey/{quote(key_id)}/change/", data)


@pytest.mark.parametrize("scopes", [["bogus"], [], ["admin", "a"], '"xxadminxx"', '["admin"]'])
def test_the_key_admin_refuses_scopes_outside_the_four(admin_client, tenant, scopes):
    key_id = key_id_of(make_key(tenant, ["inference"]))
    response = _admin_change(admin_client, key_id, scopes=scopes)
    assert response.status_code == 200  # the form again, with its errors
    assert "scopes" in response.context["adminform"].form.errors
    assert ApiKey.objects.unscoped().get(pk=key_id).scopes == ["inference"]


def test_the_key_admin_stores_chosen_scopes_as_a_list_and_never_changes_the_mode(
    admin_client, tenant
):
    secret = make_key(tenant, ["inference"], mode="test")
    key_id = key_id_of(secret)
    page = admin_client.get(f"/admin/apikeys/apikey/{quote(key_id)}/change/")
    assert page.status_code == 200 and "mode" not in page.context["adminform"].form.fields
    response = _admin_change(admin_client, key_id, scopes=["billing", "inference"], mode="live")
    assert response.status_code == 302, response.context and response.context["errors"]
    key = ApiKey.objects.unscoped().get(pk=key_id)
    assert key.scopes == ["inference", "billing"] and key.mode == "test"
    assert key.name == "edited"
    body = bearer(secret).get(f"/v1/api-keys/{key_id}")
    assert body.status_code == 403  # no admin scope: the key is still what it was, in test mode
    listed = bearer(make_key(tenant, ["admin"], mode="test")).get(f"/v1/api-keys/{key_id}")
    assert listed.json()["mode"] == "test" and listed.json()["prefix"].startswith("sk_test_")


@pytest.mark.parametrize("stored", ["xxadminxx", "admin", {"admin": True}, ["bogus"], 7])
def test_scopes_stored_in_another_shape_grant_nothing(api, tenant, stored):
    own = _own_key_id(tenant)
    secret = make_key(tenant, ["inference"])
    key_id = key_id_of(secret)
    ApiKey.objects.unscoped().filter(pk=key_id).update(scopes=stored)  # by hand, in SQL
    client = bearer(secret)
    for path in ("/v1/api-keys", "/v1/models", "/v1/usage"):
        response = client.get(path)
        assert response.status_code == 403, (path, response.json())
        assert response.json()["error"]["code"] == "insufficient_scope"
    # The API describes such a key as having no scopes, never as a string's letters.
    assert api.get(f"/v1/api-keys/{key_id}").json()["scopes"] == []
    # Nor does it count as an admin key that keeps the tenant's last way in.
    assert api.delete(f"/v1/api-keys/{own}").status_code == 409


def test_an_expired_key_is_not_rotated_into_a_secret_that_cannot_work(api, tenant):
    from datetime import timedelta

    from django.utils import timezone

    from apikeys.models import ApiKey

    created = api.post("/v1/api-keys", {"name": "short", "scopes": ["inference"]}, format="json")
    key_id = created.json()["id"]
    ApiKey.objects.for_tenant(tenant).filter(pk=key_id).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    refused = api.post(f"/v1/api-keys/{key_id}/rotate", {}, format="json")
    assert refused.status_code == 409
    assert (refused.json()["error"]["code"], refused.json()["error"]["param"]) == (
        "key_expired",
        "id",
    )
    live = api.post("/v1/api-keys", {"name": "long", "scopes": ["inference"]}, format="json")
    assert (
        api.post(f"/v1/api-keys/{live.json()['id']}/rotate", {}, format="json").status_code == 200
    )


# -- the way back: an operator mints a key for a tenant that has none --------------------


def test_an_operator_revoking_a_last_admin_key_is_told_and_mints_the_way_back(api, tenant, capsys):
    mine = _own_key_id(tenant)
    operator = staff_client("apikeys.view_apikey", "apikeys.change_apikey")
    page = operator.post(
        "/admin/apikeys/apikey/",
        {"action": "revoke", "_selected_action": [mine], "index": 0},
        follow=True,
    )
    shown = [str(m) for m in page.context["messages"]]
    assert "1 key(s) revoked." in shown
    assert any(tenant.slug in m and "create_api_key" in m for m in shown), shown

    call_command("create_api_key", tenant.slug)
    secret = capsys.readouterr().out.strip().splitlines()[-1]
    assert secret.startswith("sk_live_")
    minted = bearer(secret).post("/v1/api-keys", {"scopes": ["inference"]}, format="json")
    assert minted.status_code == 201  # an admin key again: it manages keys


def test_revoking_one_of_two_admin_keys_in_the_admin_warns_of_nothing(api, tenant):
    mine = _own_key_id(tenant)
    make_key(tenant, ["admin"])
    operator = staff_client("apikeys.view_apikey", "apikeys.change_apikey")
    page = operator.post(
        "/admin/apikeys/apikey/",
        {"action": "revoke", "_selected_action": [mine], "index": 0},
        follow=True,
    )
    assert [str(m) for m in page.context["messages"]] == ["1 key(s) revoked."]


@pytest.mark.parametrize(
    ("argv", "refusal"),
    [
        (["no-such-tenant"], "No tenant"),
        (["{slug}", "--scopes", "admin,root"], "Unknown scopes: root"),
        (["{slug}", "--scopes", ""], "at least one scope"),
    ],
)
def test_create_api_key_refuses_what_it_cannot_mint(tenant, argv, refusal):
    before = ApiKey.objects.for_tenant(tenant).count()
    with pytest.raises(CommandError, match=refusal):
        call_command("create_api_key", *[a.format(slug=tenant.slug) for a in argv])
    assert ApiKey.objects.for_tenant(tenant).count() == before


def test_create_api_key_mints_the_scopes_and_mode_asked_for(tenant, capsys):
    call_command("create_api_key", tenant.pk, "--scopes", "inference, billing", "--test")
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("sk_test_") and tenant.slug in out[0]
    key = ApiKey.objects.for_tenant(tenant).get(pk=key_id_of(out[-1]))
    assert sorted(key.scope_list) == ["billing", "inference"] and not key.livemode
