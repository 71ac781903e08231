"""API keys served from each process's key cache: confirmed by the request's admission, and
never past a revocation, rotation or operator change."""

from __future__ import annotations

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from apikeys.models import ApiKey
from apikeys.services import hash_secret
from tests.factories import TenantFactory, bearer, key_id_of, make_key

pytestmark = pytest.mark.django_db


def _in_cache(secret: str, path: str = "/v1/models", status: int = 200) -> APIClient:
    """A client whose key this process now serves from its key cache: the first call gives
    the key a generation, the second reads the row under it and keeps it."""
    from apikeys.services import _key_cache

    client = bearer(secret)
    for _ in range(2):
        assert client.get(path).status_code == status
    assert hash_secret(secret) in _key_cache  # what the test is about, not a user's view
    return client


def test_guessing_secrets_costs_redis_nothing(tenant):
    from apikeys.generations import generation_key
    from limits.services import redis_client

    guess = "sk_live_AbCdEf123456_" + "x" * 40
    for _ in range(3):
        assert bearer(guess).get("/v1/models").status_code == 401
    assert redis_client().exists(generation_key("key_AbCdEf123456")) == 0


def test_a_key_in_the_cache_is_served_without_reading_the_database(tenant):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = _in_cache(make_key(tenant, ["inference"]))
    with CaptureQueriesContext(connection) as queries:
        assert client.get("/v1/models").status_code == 200
    assert not [q for q in queries.captured_queries if "secret_hash" in q["sql"]]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/v1/models"),
        ("get", "/v1/models?bogus=1"),  # would be a 400
        ("get", "/v1/usage"),  # lacks the billing scope: would be a 403
        ("post", "/v1/classify"),
        ("post", "/v1/api-keys"),
    ],
)
def test_revoking_a_cached_key_takes_effect_on_its_next_request(api, tenant, method, path):
    secret = make_key(tenant, ["inference"])
    _in_cache(secret)
    assert api.delete(f"/v1/api-keys/{key_id_of(secret)}").status_code == 200
    # Whatever else is wrong with the request, a revoked key is what it hears about.
    response = getattr(bearer(secret), method)(path, {}, format="json")
    assert response.status_code == 401, response.json()
    assert response.json()["error"]["code"] == "api_key_revoked"


def test_rotating_a_cached_key_stops_its_old_secret_at_once(api, tenant):
    secret = make_key(tenant, ["inference"])
    _in_cache(secret)
    new = api.post(f"/v1/api-keys/{key_id_of(secret)}/rotate", {}, format="json").json()
    assert bearer(secret).get("/v1/models").status_code == 401
    assert bearer(new["secret"]).get("/v1/models").status_code == 200


def test_an_operators_changes_to_a_cached_key_apply_on_its_next_request(tenant):
    from django.contrib.admin.sites import site
    from django.contrib.messages.storage.cookie import CookieStorage
    from django.test import RequestFactory

    secret = make_key(tenant, ["inference"])
    client = _in_cache(secret, "/v1/usage", 403)  # cached without the billing scope
    admin = site._registry[ApiKey]
    key = ApiKey.objects.unscoped().get(pk=key_id_of(secret))
    key.scopes = ["inference", "billing"]
    admin.save_model(None, key, None, True)
    assert client.get("/v1/usage").status_code == 200
    request = RequestFactory().post("/admin/apikeys/apikey/")
    request._messages = CookieStorage(request)  # the action tells the operator what it did
    admin.revoke(request, ApiKey.objects.unscoped().filter(pk=key.pk))
    response = client.get("/v1/models")
    assert response.status_code == 401 and response.json()["error"]["code"] == "api_key_revoked"


def test_an_expired_key_that_an_operator_extends_works_on_its_next_request(tenant):
    """A cached row refused as expired was refused before its generation was read: a key
    whose expiry support had cleared kept answering 401 for up to a minute."""
    from datetime import timedelta

    from django.contrib.admin.sites import site

    secret = make_key(tenant, ["inference"])
    client = _in_cache(secret)
    admin = site._registry[ApiKey]
    key = ApiKey.objects.unscoped().get(pk=key_id_of(secret))
    key.expires_at = timezone.now() - timedelta(days=1)
    admin.save_model(None, key, None, True)
    for _ in range(2):  # (the second from the cache again)
        assert client.get("/v1/models").json()["error"]["code"] == "api_key_expired"
    key.expires_at = None
    admin.save_model(None, key, None, True)
    assert client.get("/v1/models").status_code == 200


def test_a_lost_generation_sends_a_cached_key_back_to_the_database(tenant):
    """Redis flushed or restarted: the row is read again rather than trusted."""
    from apikeys.generations import generation_key
    from limits.services import redis_client

    secret = make_key(tenant, ["inference"])
    client = _in_cache(secret)
    # A revocation that bypassed the services, then the generation lost with Redis's data.
    ApiKey.objects.unscoped().filter(pk=key_id_of(secret)).update(revoked_at=timezone.now())
    redis_client().delete(generation_key(key_id_of(secret)))
    assert client.get("/v1/models").status_code == 401


def test_a_cached_key_deleted_by_an_operator_or_with_its_tenant_stops_at_once():
    from django.contrib.admin.sites import site

    from tenants.models import Tenant

    tenant = TenantFactory()
    first, second = make_key(tenant, ["inference"]), make_key(tenant, ["inference"])
    for secret in (first, second):
        _in_cache(secret)
    site._registry[ApiKey].delete_model(None, ApiKey.objects.unscoped().get(pk=key_id_of(first)))
    assert bearer(first).get("/v1/models").status_code == 401
    site._registry[Tenant].delete_model(None, tenant)
    assert bearer(second).get("/v1/models").status_code == 401
