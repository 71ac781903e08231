"""Idempotency-Key on any POST, shown on key creation (no worker needed); the classify
replay, which must also bill once, is in tests/e2e."""

import pytest
from rest_framework.test import APIClient

from core.models import IdempotencyRecord

pytestmark = pytest.mark.django_db


def post(api, body, key):
    return api.post("/v1/api-keys", body, format="json", HTTP_IDEMPOTENCY_KEY=key)


def test_same_key_same_body_replays_the_first_response(api):
    first = post(api, {"name": "a", "scopes": ["inference"]}, "k-1")
    second = post(api, {"scopes": ["inference"], "name": "a"}, "k-1")  # same JSON, other order
    assert first.status_code == second.status_code == 201
    # The same answer, but the secret: shown once, stored only as a hash, never kept for a
    # replay (the record would have held it in the clear).
    assert first.json()["secret"].startswith("sk_live_")
    assert second.json() == {**first.json(), "secret": None}
    # Member for member, in the same order (PostgreSQL's jsonb sorted a kept body's members).
    assert second.content == first.content.replace(f'"{first.json()["secret"]}"'.encode(), b"null")
    stored = IdempotencyRecord.objects.unscoped().get(key="k-1")
    assert first.json()["secret"] not in str(stored.response_body)
    assert second["Idempotent-Replayed"] == "true"
    assert second["X-Request-Id"] == first["X-Request-Id"]
    keys = api.get("/v1/api-keys").json()["data"]
    assert sum(1 for k in keys if k["name"] == "a") == 1  # created once


def test_records_past_any_replay_are_purged(api):
    from datetime import timedelta

    from django.utils import timezone

    from core.tasks import idempotency_purge_task

    post(api, {"name": "old", "scopes": ["inference"]}, "k-old")
    post(api, {"name": "new", "scopes": ["inference"]}, "k-new")
    IdempotencyRecord.objects.unscoped().filter(key="k-old").update(
        created_at=timezone.now() - timedelta(days=2)
    )
    assert idempotency_purge_task() == 1
    assert list(IdempotencyRecord.objects.unscoped().values_list("key", flat=True)) == ["k-new"]


def test_same_key_other_body_is_409(api):
    assert post(api, {"name": "a", "scopes": ["inference"]}, "k-2").status_code == 201
    response = post(api, {"name": "b", "scopes": ["inference"]}, "k-2")
    assert response.status_code == 409
    assert response.json()["error"]["type"] == "conflict"
    assert response.json()["error"]["code"] == "idempotency_key_reused"


def test_keys_are_per_tenant(api, other_tenant, client_for):
    other = client_for(other_tenant, ["admin"])
    assert post(api, {"name": "a", "scopes": ["inference"]}, "shared").status_code == 201
    response = post(other, {"name": "b", "scopes": ["inference"]}, "shared")
    assert response.status_code == 201 and response.json()["name"] == "b"


def test_a_failed_attempt_can_be_retried_under_the_same_id(api):
    bad = post(api, {"scopes": ["nope"]}, "k-3")
    assert bad.status_code == 400
    good = post(api, {"scopes": ["nope"]}, "k-3")  # still bad: not a replay, re-validated
    assert good.status_code == 400 and "Idempotent-Replayed" not in good
    assert good["X-Request-Id"] == bad["X-Request-Id"]  # retries never mint a new id
    # Another body under the key is 409 even after a failure (API.md): the same body retried
    # is the key's use.
    fixed = post(api, {"scopes": ["inference"]}, "k-3")
    assert fixed.status_code == 409, fixed.content
    assert fixed.json()["error"]["code"] == "idempotency_key_reused"
    assert post(api, {"scopes": ["inference"]}, "k-4").status_code == 201


def test_another_body_after_a_failure_that_may_have_run_is_409(api, tenant):
    """A 500 or a 503 (the worker's answer late) may have run: another body under its key
    would be billed as a second call the client takes for a retry of the first."""
    from django.utils import timezone

    from core.idempotency import request_fingerprint

    body = {"name": "a", "scopes": ["inference"]}
    IdempotencyRecord.objects.create(
        tenant=tenant, key="k-5", request_id="req_first", locked_until=timezone.now(),
        fingerprint=request_fingerprint(method="POST", path="/v1/api-keys", data=body),
        state=IdempotencyRecord.State.RELEASED,
    )  # fmt: skip
    other = post(api, {**body, "name": "b"}, "k-5")
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
    retried = post(api, body, "k-5")
    assert retried.status_code == 201 and retried["X-Request-Id"] == "req_first"


def _in_flight(tenant, key: str, path: str = "/v1/api-keys", body=None) -> None:
    """An attempt under ``key`` with ``body`` still running (its record locked for a
    minute)."""
    from datetime import timedelta

    from django.utils import timezone

    from core.idempotency import request_fingerprint

    body = {"scopes": ["inference"]} if body is None else body
    IdempotencyRecord.objects.create(
        tenant=tenant, key=key, request_id="req_x",
        fingerprint=request_fingerprint(method="POST", path=path, data=body),
        state=IdempotencyRecord.State.IN_PROGRESS,
        locked_until=timezone.now() + timedelta(seconds=60),
    )  # fmt: skip


def test_a_key_in_flight_is_409(api, tenant):
    _in_flight(tenant, "busy")
    response = post(api, {"scopes": ["inference"]}, "busy")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency_key_in_use"
    assert response["Retry-After"] == "1"


def test_another_body_under_a_key_in_flight_is_409_reused_not_retry_soon(api, tenant):
    """It was "in use, retry in 1 s": a retry that could only be refused as reused once the
    first attempt ended."""
    _in_flight(tenant, "busy")
    response = post(api, {"scopes": ["billing"]}, "busy")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency_key_reused"
    assert "Retry-After" not in response


def test_a_duplicate_of_a_call_in_flight_is_409_even_past_the_quota(tenant):
    """The first attempt holds the quota (or the concurrency slot) its duplicate would need:
    the duplicate is told the key is in use (retry, and get the first one's answer), not a
    402 or 429 that paying or waiting would not cure (5 of 6 parallel duplicates got 402)."""
    from tests.factories import bearer, make_key
    from tests.limits.test_limits import custom_plan, on_plan

    on_plan(tenant, custom_plan(monthly_hard_cap=3))
    client = bearer(make_key(tenant, ["inference"]))
    body = {"model": "minilm-l6", "inputs": ["a"] * 4, "labels": ["x", "y"]}
    _in_flight(tenant, "busy", "/v1/classify", body)
    duplicate = client.post("/v1/classify", body, format="json", HTTP_IDEMPOTENCY_KEY="busy")
    assert duplicate.status_code == 409, duplicate.json()
    assert duplicate.json()["error"]["code"] == "idempotency_key_in_use"
    # Under a key of its own, the same call is the quota's 402; nothing was counted.
    fresh = client.post("/v1/classify", body, format="json", HTTP_IDEMPOTENCY_KEY="other")
    assert fresh.status_code == 402
    assert fresh.json()["error"]["code"] == "quota_exceeded"


def test_an_overlong_key_is_a_400(api):
    response = post(api, {"scopes": ["inference"]}, "x" * 256)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "Idempotency-Key"


def test_a_key_outside_printable_ascii_is_a_400_that_says_so(api):
    for key in ("café", "tab\there"):
        response = post(api, {"scopes": ["inference"]}, key)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "invalid_idempotency_key"
        assert "printable ASCII" in error["message"]


def test_live_and_test_mode_keep_their_keys_apart(tenant, client_for):
    """The same Idempotency-Key from a test key and then a live key (a client that derives
    its keys from its own ids, and runs its tests first) is two requests, each run in its
    own mode; each mode replays only its own."""
    from apikeys.models import ApiKey
    from tests.factories import make_key

    test = APIClient()
    test.credentials(HTTP_AUTHORIZATION=f"Bearer {make_key(tenant, ['admin'], ApiKey.Mode.TEST)}")
    live = client_for(tenant, ["admin"])
    body = {"name": "deploy", "scopes": ["inference"]}
    in_test = post(test, body, "deploy-42")
    in_live = post(live, body, "deploy-42")
    assert in_test.status_code == in_live.status_code == 201
    assert "Idempotent-Replayed" not in in_live
    assert in_test.json()["mode"] == "test" and in_live.json()["mode"] == "live"
    assert in_live.json()["id"] != in_test.json()["id"]
    again = post(test, body, "deploy-42")
    assert again["Idempotent-Replayed"] == "true" and again.json()["id"] == in_test.json()["id"]
    again = post(live, body, "deploy-42")
    assert again["Idempotent-Replayed"] == "true" and again.json()["id"] == in_live.json()["id"]
