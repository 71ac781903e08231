from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from apikeys import messages
from apikeys.models import ApiKey
from apikeys.services import api_key_authenticate, hash_secret
from tests.factories import TenantFactory, bearer, make_key

pytestmark = pytest.mark.django_db


def test_created_key_shows_its_secret_once_and_stores_only_a_hash(api):
    response = api.post("/v1/api-keys", {"name": "ci", "scopes": ["inference"]}, format="json")
    assert response.status_code == 201
    body = response.json()
    secret = body["secret"]
    assert secret.startswith("sk_live_") and len(secret) > 40
    assert body["id"].startswith("key_") and secret.startswith(body["prefix"])
    key = ApiKey.objects.unscoped().get(pk=body["id"])
    assert key.secret_hash == hash_secret(secret)
    assert secret not in str(ApiKey.objects.unscoped().filter(pk=key.pk).values().first())
    listed = api.get("/v1/api-keys").json()
    assert listed["object"] == "list" and listed["has_more"] is False
    assert all("secret" not in item for item in listed["data"])
    assert body["id"] in [item["id"] for item in listed["data"]]


def test_new_key_authenticates_with_its_scopes(api):
    secret = api.post("/v1/api-keys", {"scopes": ["inference"]}, format="json").json()["secret"]
    client = bearer(secret)
    assert client.get("/v1/models").status_code == 200
    denied = client.get("/v1/api-keys")
    assert denied.status_code == 403
    assert denied.json()["error"]["type"] == "permission"
    assert denied.json()["error"]["code"] == "insufficient_scope"
    assert client.get("/v1/usage").status_code == 403


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "missing_api_key"),
        ("Bearer", "invalid_api_key"),
        ("Basic abc", "invalid_api_key"),
        ("Bearer sk_live_nope", "invalid_api_key"),
        ("Bearer pk_live_123", "invalid_api_key"),
        # Not ASCII: as a server that decodes headers as latin-1 hands them on, and empty, as
        # granian hands them (tests/deploy/test_api_server.py sends them over HTTP).
        ("Bearer sk_test_\u00e9t\u00e9", "invalid_api_key"),
        ("Bearer sk_live_\u00c3\u00a9\u20ac", "invalid_api_key"),
        ("", "invalid_api_key"),
    ],
)
def test_bad_credentials_are_401_in_the_error_shape(header, code):
    client = APIClient()
    if header is not None:
        client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get("/v1/models")
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "authentication" and error["code"] == code
    if header is not None and (header == "" or not header.isascii()):
        assert error["message"] == messages.INVALID_KEY  # a wrong key's, never "no key"
    assert set(error) == {"type", "code", "message", "param"}
    assert response["X-Request-Id"].startswith("req_")
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'


def test_revoke_takes_effect_on_the_next_request(api):
    created = api.post("/v1/api-keys", {"scopes": ["inference"]}, format="json").json()
    client = bearer(created["secret"])
    assert client.get("/v1/models").status_code == 200
    deleted = api.delete(f"/v1/api-keys/{created['id']}")
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    response = client.get("/v1/models")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "api_key_revoked"
    assert api.delete(f"/v1/api-keys/{created['id']}").status_code == 404


def test_rotate_without_grace_kills_the_old_secret_at_once(api):
    created = api.post("/v1/api-keys", {"scopes": ["inference"]}, format="json").json()
    rotated = api.post(f"/v1/api-keys/{created['id']}/rotate", {}, format="json")
    assert rotated.status_code == 200
    new = rotated.json()
    assert new["id"] == created["id"] and new["secret"] != created["secret"]
    assert bearer(created["secret"]).get("/v1/models").status_code == 401
    assert bearer(new["secret"]).get("/v1/models").status_code == 200


def test_rotate_with_grace_keeps_the_old_secret_until_it_ends(api, monkeypatch):
    created = api.post("/v1/api-keys", {"scopes": ["inference"]}, format="json").json()
    new = api.post(
        f"/v1/api-keys/{created['id']}/rotate", {"grace_period_seconds": 3600}, format="json"
    ).json()
    assert new["previous_secret_expires_at"] is not None
    assert bearer(created["secret"]).get("/v1/models").status_code == 200
    assert bearer(new["secret"]).get("/v1/models").status_code == 200
    # An hour and a second later (the row is in this process's key cache by now).
    later = timezone.now() + timedelta(seconds=3601)
    monkeypatch.setattr(timezone, "now", lambda: later)
    assert bearer(created["secret"]).get("/v1/models").status_code == 401
    assert bearer(new["secret"]).get("/v1/models").status_code == 200


def test_a_rotation_never_cuts_an_announced_grace_period_short(api):
    created = api.post("/v1/api-keys", {"scopes": ["inference"]}, format="json").json()
    path = f"/v1/api-keys/{created['id']}/rotate"
    first = api.post(path, {"grace_period_seconds": 3600}, format="json").json()
    again = api.post(path, {"grace_period_seconds": 60}, format="json")
    assert again.status_code == 409, again.json()
    error = again.json()["error"]
    assert (error["code"], error["param"]) == ("rotation_in_progress", "grace_period_seconds")
    assert first["previous_secret_expires_at"] in error["message"]
    # Nothing changed: both secrets still work.
    assert bearer(created["secret"]).get("/v1/models").status_code == 200
    assert bearer(first["secret"]).get("/v1/models").status_code == 200
    # Without a grace period (a leak): every old secret stops at once.
    final = api.post(path, {"grace_period_seconds": 0}, format="json").json()
    assert bearer(created["secret"]).get("/v1/models").status_code == 401
    assert bearer(first["secret"]).get("/v1/models").status_code == 401
    assert bearer(final["secret"]).get("/v1/models").status_code == 200


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"null", None), (b"[]", None), (b"0", None), (b"false", None), (b'""', None),
        (b'{"grace_period_seconds": "5"}', "grace_period_seconds"),
        (b'{"grace_period_seconds": true}', "grace_period_seconds"),
        (b'{"grace_period_seconds": 5.0}', "grace_period_seconds"),
    ],
)  # fmt: skip
def test_rotate_refuses_a_body_that_is_not_an_object_of_integers(api, raw, param):
    created = api.post("/v1/api-keys", {"scopes": ["inference"]}, format="json").json()
    response = api.post(
        f"/v1/api-keys/{created['id']}/rotate", raw, content_type="application/json"
    )
    assert response.status_code == 400, response.content
    assert response.json()["error"]["param"] == param
    # Nothing was rotated.
    assert bearer(created["secret"]).get("/v1/models").status_code == 200
    # No body at all is no options: rotated, old secret gone.
    no_body = api.post(f"/v1/api-keys/{created['id']}/rotate", content_type="application/json")
    assert no_body.status_code == 200
    assert bearer(created["secret"]).get("/v1/models").status_code == 401


def test_rotate_rejects_a_negative_grace_period(api):
    created = api.post("/v1/api-keys", {"scopes": ["inference"]}, format="json").json()
    response = api.post(
        f"/v1/api-keys/{created['id']}/rotate", {"grace_period_seconds": -5}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "grace_period_seconds"


def test_expired_key_is_rejected(tenant):
    secret = make_key(tenant, ["inference"])
    ApiKey.objects.for_tenant(tenant).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = bearer(secret).get("/v1/models")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "api_key_expired"


def test_expires_at_in_the_past_is_a_400(api):
    response = api.post(
        "/v1/api-keys",
        {"scopes": ["inference"], "expires_at": "2001-01-01T00:00:00Z"},
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "expires_at"


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("2030-06-30T23:59:59Z", "2030-06-30T23:59:59Z"),
        ("2030-06-30t23:59:59z", "2030-06-30T23:59:59Z"),  # RFC 3339 allows either case
        ("2030-06-30T23:59:60Z", "2030-07-01T00:00:00Z"),  # a leap second: the next one
        ("2030-06-30T20:00:00.5-04:00", "2030-07-01T00:00:00.500000Z"),
        # Past year 9999 in UTC (a 500 on the database write): its last instant.
        ("9999-12-31T23:59:59-01:00", "9999-12-31T23:59:59.999999Z"),
    ],
)
def test_expires_at_takes_what_rfc_3339_writes(api, given, stored):
    """DRF's own field refused a lower-case t or z and a leap second: valid date-times."""
    response = api.post("/v1/api-keys", {"scopes": ["inference"], "expires_at": given},
                        format="json")  # fmt: skip
    assert response.status_code == 201, response.content
    assert response.json()["expires_at"] == stored


# (A date and unix seconds are taken, as /v1/usage takes them: test_apikey_expiry.py.)
@pytest.mark.parametrize("given", ["2030-W26", "2030-06-30T10", "2030-06", 1924905600.5, True])
def test_expires_at_refuses_what_is_not_a_date_time(api, given):
    response = api.post("/v1/api-keys", {"scopes": ["inference"], "expires_at": given},
                        format="json")  # fmt: skip
    assert response.status_code == 400, response.content
    assert response.json()["error"]["param"] == "expires_at"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"scopes": ["superuser"]}, "scopes[0]"),
        ({"scopes": []}, "scopes"),
        ({"scopes": [None] * 100_000}, "scopes"),  # its length first, not each item's error
        ({"scopes": "admin"}, "scopes"),
        ({}, "scopes"),
        ({"scopes": ["inference"], "colour": "red"}, "colour"),
        ({"scopes": ["inference"], "name": 7}, "name"),
    ],
)
def test_bad_key_creation_names_the_parameter(api, body, param):
    response = api.post("/v1/api-keys", body, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_a_key_cannot_mint_scopes_it_lacks(tenant):
    # Only admin keys reach /v1/api-keys, and admin implies every scope; the rule still holds
    # in the service for any caller that is not admin.
    from apikeys.services import api_key_create
    from core.errors import PermissionError_

    limited = api_key_create(tenant=tenant, scopes=["inference"]).key
    with pytest.raises(PermissionError_):
        api_key_create(tenant=tenant, scopes=["training"], created_by=limited)
    assert api_key_create(tenant=tenant, scopes=["inference"], created_by=limited).key


def test_suspended_tenant_gets_403(tenant):
    secret = make_key(tenant, ["admin"])
    tenant.status = "suspended"
    tenant.save()
    response = bearer(secret).get("/v1/models")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "tenant_suspended"


def test_last_used_at_is_written_at_most_once_a_minute(tenant, django_assert_num_queries):
    secret = make_key(tenant, ["inference"])
    first = api_key_authenticate(secret=secret)
    assert first.last_used_at is not None
    # Second use within the minute: only the lookup, no write.
    with django_assert_num_queries(1):
        again = api_key_authenticate(secret=secret)
    assert again.last_used_at == first.last_used_at


def test_a_database_too_busy_for_the_last_used_write_does_not_fail_the_request(tenant, monkeypatch):
    from django.db import OperationalError
    from django.db.models.query import QuerySet

    from apikeys.models import ApiKey

    secret = make_key(tenant, ["inference"])
    update = QuerySet.update

    def busy(queryset, **values):  # what SQLite says when a writer holds the lock too long
        if queryset.model is ApiKey and "last_used_at" in values:
            raise OperationalError("database is locked")
        return update(queryset, **values)

    monkeypatch.setattr(QuerySet, "update", busy)
    response = bearer(secret).get("/v1/models")
    assert response.status_code == 200
    key = ApiKey.objects.unscoped().filter(tenant=tenant).order_by("-created_at").first()
    assert key is not None
    assert key.last_used_at is None  # skipped, not half-written
    monkeypatch.setattr(QuerySet, "update", update)
    assert bearer(secret).get("/v1/models").status_code == 200
    key.refresh_from_db()
    assert key.last_used_at is not None  # the next request writes it


def test_test_mode_key_mints_test_mode_keys(tenant):
    client = bearer(make_key(tenant, ["admin"], mode="test"))
    created = client.post("/v1/api-keys", {"scopes": ["inference"]}, format="json").json()
    assert created["mode"] == "test" and created["secret"].startswith("sk_test_")


def test_list_paginates_with_a_cursor(api, tenant):
    for _ in range(4):
        api.post("/v1/api-keys", {"scopes": ["inference"]}, format="json")
    first = api.get("/v1/api-keys?limit=2").json()
    assert len(first["data"]) == 2 and first["has_more"] is True
    second = api.get(f"/v1/api-keys?limit=2&starting_after={first['data'][-1]['id']}").json()
    third = api.get(f"/v1/api-keys?limit=2&starting_after={second['data'][-1]['id']}").json()
    ids = [k["id"] for page in (first, second, third) for k in page["data"]]
    assert len(ids) == len(set(ids)) == 5  # four plus the fixture's own key
    assert third["has_more"] is False
    assert api.get("/v1/api-keys?limit=0").status_code == 400
    assert api.get("/v1/api-keys?limit=abc").status_code == 400
    # The published schema says integer: nothing else passes for one.
    for raw in ("", "+5", "%205", "1_0", "5.0", "99999999999999999999999"):
        response = api.get(f"/v1/api-keys?limit={raw}")
        assert response.status_code == 400, raw
        assert response.json()["error"]["param"] == "limit"
    # An integer too large to read is an integer out of range, not "no integer".
    for raw in ("99999999999999999999999", "-99999999999999999999999", "101"):
        message = api.get(f"/v1/api-keys?limit={raw}").json()["error"]["message"]
        assert message == "limit must be between 1 and 100.", raw
    assert api.get("/v1/api-keys?starting_after=key_nope").status_code == 404
    # An empty cursor is no cursor at all: a 400, as an empty limit (it read as the first page).
    empty = api.get("/v1/api-keys?starting_after=")
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "starting_after"
    # A revoked key still marks its place: the page after it is the page after it.
    revoked = second["data"][-1]["id"]
    assert api.delete(f"/v1/api-keys/{revoked}").status_code == 200
    again = api.get(f"/v1/api-keys?limit=2&starting_after={revoked}").json()
    assert again == third
    # Not a live key's place from test mode, though: that one is not there.
    test_mode = bearer(make_key(tenant, ["admin"], mode="test"))
    hidden = test_mode.get(f"/v1/api-keys?starting_after={revoked}")
    assert hidden.status_code == 404


def test_create_tenant_command_prints_a_working_secret_last(capsys, db):
    from django.core.management import call_command

    call_command("create_tenant", "Globex Inc")
    secret = capsys.readouterr().out.strip().splitlines()[-1]
    assert secret.startswith("sk_live_")
    response = bearer(secret).get("/v1/api-keys")
    assert response.status_code == 200


def test_other_tenants_key_is_a_404(api):
    other = TenantFactory()
    foreign = (
        bearer(make_key(other, ["admin"]))
        .post("/v1/api-keys", {"scopes": ["inference"]}, format="json")
        .json()
    )
    for method, path in [
        ("get", f"/v1/api-keys/{foreign['id']}"),
        ("delete", f"/v1/api-keys/{foreign['id']}"),
        ("post", f"/v1/api-keys/{foreign['id']}/rotate"),
    ]:
        response = getattr(api, method)(path, format="json")
        assert response.status_code == 404, (method, path)
    assert bearer(foreign["secret"]).get("/v1/models").status_code == 200


def test_the_per_request_key_lookup_reads_the_key_as_the_orm_does(tenant):
    """Authentication reads the key with one hand-written SELECT on a cursor: every field
    (datetimes, scopes) must come back as the ORM returns it, by either secret."""
    from apikeys.services import _key_by_digest

    secret = make_key(tenant, ["inference", "billing"])
    now = timezone.now()
    ApiKey.objects.for_tenant(tenant).update(
        expires_at=now + timedelta(days=3),
        last_used_at=now,
        previous_secret_hash=hash_secret("sk_live_old"),
        previous_secret_expires_at=now + timedelta(hours=1),
    )
    expected = ApiKey.objects.for_tenant(tenant).get()
    for digest in (hash_secret(secret), hash_secret("sk_live_old")):
        found = _key_by_digest(digest)
        assert found is not None and found.pk == expected.pk
        for field in ApiKey._meta.concrete_fields:
            assert getattr(found, field.attname) == getattr(expected, field.attname), field.name
        assert found._state.adding is False
    assert _key_by_digest(hash_secret("sk_live_nobody")) is None


# -- the key cache: rows kept per process, confirmed on every request ----------------------


def test_a_test_mode_key_never_reaches_live_keys(tenant, client_for):
    """As in Stripe: test mode creates, sees and manages test-mode keys only."""
    live = client_for(tenant, ["admin"])
    live_key = live.post("/v1/api-keys", {"scopes": ["inference"]}, format="json").json()
    test = client_for(tenant, ["admin"], mode="test")

    minted = test.post("/v1/api-keys", {"scopes": ["inference"]}, format="json")
    assert minted.status_code == 201 and minted.json()["secret"].startswith("sk_test_")
    refused = test.post("/v1/api-keys", {"scopes": ["admin"], "mode": "live"}, format="json")
    assert refused.status_code == 403
    assert (refused.json()["error"]["code"], refused.json()["error"]["param"]) == (
        "livemode_required", "mode"
    )  # fmt: skip

    listed = {k["id"] for k in test.get("/v1/api-keys").json()["data"]}
    assert minted.json()["id"] in listed and live_key["id"] not in listed
    for method, path in [
        ("get", f"/v1/api-keys/{live_key['id']}"),
        ("delete", f"/v1/api-keys/{live_key['id']}"),
        ("post", f"/v1/api-keys/{live_key['id']}/rotate"),
    ]:
        assert getattr(test, method)(path).status_code == 404, path
    assert bearer(live_key["secret"]).get("/v1/models").status_code == 200  # untouched
    # A live key still sees and manages both.
    assert minted.json()["id"] in {k["id"] for k in live.get("/v1/api-keys").json()["data"]}


@pytest.mark.parametrize("given", [253_402_300_800, 1_924_905_600_000, 10**20])
def test_expires_at_in_unix_seconds_past_year_9999_is_refused_not_stored_as_another(api, given):
    """Unix seconds past what a moment holds (a milliseconds timestamp, most often) were
    stored as year 9999's last instant, a 201 with an expiry other than the one sent."""
    response = api.post("/v1/api-keys", {"scopes": ["inference"], "expires_at": given},
                        format="json")  # fmt: skip
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["param"] == "expires_at" and "milliseconds" in error["message"]
    # The last second a moment holds is taken as it is.
    last = api.post("/v1/api-keys", {"scopes": ["inference"], "expires_at": 253_402_300_799},
                    format="json")  # fmt: skip
    assert last.status_code == 201 and last.json()["expires_at"] == "9999-12-31T23:59:59Z"
