"""A key mints no more than it has: as with scopes, a key that expires cannot create one that
outlives it (a two-minute key minted a key that never expired)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from apikeys.services import api_key_create
from tests.factories import bearer

pytestmark = pytest.mark.django_db


def _at(moment):
    return moment.isoformat().replace("+00:00", "Z")


def test_a_key_that_expires_cannot_mint_one_that_outlives_it(tenant):
    ends = (timezone.now() + timedelta(minutes=2)).replace(microsecond=0)
    short = bearer(api_key_create(tenant=tenant, scopes=["admin"], expires_at=ends).secret)

    # Unsaid, the new key expires with its creator.
    inherited = short.post("/v1/api-keys", {"scopes": ["inference"]}, format="json")
    assert inherited.status_code == 201, inherited.content
    assert inherited.json()["expires_at"] == _at(ends)
    sooner = short.post(
        "/v1/api-keys", {"scopes": ["inference"], "expires_at": _at(ends - timedelta(minutes=1))},
        format="json",
    )  # fmt: skip
    assert sooner.status_code == 201, sooner.content

    later = short.post(
        "/v1/api-keys", {"scopes": ["admin"], "expires_at": _at(ends + timedelta(days=365))},
        format="json",
    )  # fmt: skip
    assert later.status_code == 403
    error = later.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "permission", "expiry_escalation", "expires_at",
    )  # fmt: skip
    assert _at(ends) in error["message"]

    # Null says "never expires" outright: refused as any later expiry, not made to expire
    # with its creator behind the caller's back (it was a 201 expiring in two minutes).
    never = short.post("/v1/api-keys", {"scopes": ["inference"], "expires_at": None},
                       format="json")  # fmt: skip
    assert never.status_code == 403, never.content
    assert never.json()["error"]["code"] == "expiry_escalation"
    assert never.json()["error"]["param"] == "expires_at"


def test_a_key_that_never_expires_mints_any_expiry(tenant):
    forever = bearer(api_key_create(tenant=tenant, scopes=["admin"]).secret)
    made = forever.post("/v1/api-keys", {"scopes": ["inference"]}, format="json")
    assert made.status_code == 201 and made.json()["expires_at"] is None
    never = forever.post("/v1/api-keys", {"scopes": ["inference"], "expires_at": None},
                         format="json")  # fmt: skip
    assert never.status_code == 201 and never.json()["expires_at"] is None


def test_a_key_that_expires_cannot_rotate_one_that_outlives_it(tenant):
    """A new secret for a key that never expires is a key that never expires."""
    forever = api_key_create(tenant=tenant, scopes=["admin"]).key
    ends = (timezone.now() + timedelta(minutes=2)).replace(microsecond=0)
    short_key = api_key_create(tenant=tenant, scopes=["admin"], expires_at=ends)
    short = bearer(short_key.secret)
    refused = short.post(f"/v1/api-keys/{forever.pk}/rotate", {}, format="json")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "expiry_escalation"
    assert (
        short.post(f"/v1/api-keys/{short_key.key.pk}/rotate", {}, format="json").status_code == 200
    )


def test_expires_at_takes_the_forms_usage_ranges_take(tenant):
    """Unix seconds, as Stripe writes moments, and a date (midnight UTC), beside an RFC 3339
    date-time: a key's expiry refused the two forms /v1/usage's start and end take."""
    admin = bearer(api_key_create(tenant=tenant, scopes=["admin"]).secret)
    year = timezone.now().year + 2
    midnight = datetime(year, 1, 1, tzinfo=UTC)
    for given in (int(midnight.timestamp()), f"{year}-01-01", f"{year}-01-01t00:00:00z"):
        made = admin.post("/v1/api-keys", {"scopes": ["inference"], "expires_at": given},
                          format="json")  # fmt: skip
        assert made.status_code == 201, (given, made.content)
        assert made.json()["expires_at"] == _at(midnight)
    for bad in (True, 1.5, "soon", f"{year}-01", [1]):
        refused = admin.post("/v1/api-keys", {"scopes": ["inference"], "expires_at": bad},
                             format="json")  # fmt: skip
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "expires_at"


def test_the_document_says_each_form_of_expires_at_and_null():
    """OpenAPI 3.0 counts ``nullable`` only beside a ``type``: each form says it."""
    from rest_framework.test import APIClient

    schema = APIClient().get("/v1/openapi.json").json()
    field = schema["components"]["schemas"]["ApiKeyCreateRequest"]["properties"]["expires_at"]
    forms = {(f["type"], f.get("format"), f.get("nullable")) for f in field["anyOf"]}
    assert forms == {
        ("string", "date-time", True), ("string", "date", True), ("integer", None, True)
    }  # fmt: skip
