"""Request-time enforcement against the real Redis: rate limits with their headers, the
concurrency cap, the quota (exact under a race) and unpaid subscriptions."""

from __future__ import annotations

import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import redis

from apikeys.models import ApiKey
from core.errors import APIError
from limits.services import limits_admit, limits_settle
from plans.models import Plan
from tests.factories import bearer, make_key, subscribe

pytestmark = pytest.mark.django_db


def custom_plan(**terms) -> Plan:
    slug = f"t{uuid.uuid4().hex[:8]}"
    defaults = {"name": slug, "rate_limit_per_minute": 10_000, "concurrency_cap": 10_000}
    return Plan.objects.create(id=f"{slug}@1", slug=slug, **{**defaults, **terms})


def on_plan(tenant, plan: Plan, **fields):
    now = datetime.now(UTC)
    from billing.models import Subscription

    period = {
        "current_period_start": now - timedelta(days=1),
        "current_period_end": now + timedelta(days=29),
    }
    return Subscription.objects.create(tenant=tenant, plan=plan, **{**period, **fields})


def key_of(tenant, secret):
    from apikeys.services import api_key_authenticate

    return api_key_authenticate(secret=secret)


def test_plan_rate_limit_with_headers(tenant):
    on_plan(tenant, custom_plan(rate_limit_per_minute=20))
    client = bearer(make_key(tenant, ["inference"]))
    remaining = []
    for _ in range(20):  # 20 requests a minute, a burst of up to 20
        response = client.get("/v1/models")
        assert response.status_code == 200
        assert response["RateLimit-Limit"] == "20"
        remaining.append(int(response["RateLimit-Remaining"]))
        assert int(response["RateLimit-Reset"]) >= 1
    assert remaining == sorted(remaining, reverse=True) and remaining[-1] == 0
    refused = client.get("/v1/models")
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "rate_limited"
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert refused["RateLimit-Remaining"] == "0"


def test_a_throttled_key_is_429_whatever_its_query_and_a_bad_query_is_counted(tenant):
    on_plan(tenant, custom_plan(rate_limit_per_minute=3))
    client = bearer(make_key(tenant, ["inference"]))
    refused = client.get("/v1/models?foo=1")  # a 400, admitted and counted like any call
    assert refused.status_code == 400 and refused["RateLimit-Remaining"] == "2"
    assert client.get("/v1/models?limit=1&limit=2")["RateLimit-Remaining"] == "1"
    assert client.get("/v1/models").status_code == 200
    for query in ("", "?foo=1", "?limit=1&limit=2", "?format=api"):
        throttled = client.get(f"/v1/models{query}")
        assert throttled.status_code == 429, query
        assert throttled["Retry-After"]


def test_a_body_that_cannot_be_read_is_counted_and_a_throttled_key_gets_429_for_it(tenant):
    """Bad JSON and a member named twice were refused before admission: never counted, and
    a throttled key could send any number of them (16 MB each) for the API to parse."""
    on_plan(tenant, custom_plan(rate_limit_per_minute=3))
    client = bearer(make_key(tenant, ["inference"]))
    bodies = ['{"model": "minilm-l6", "inputs": ["a"', '{"model": "a", "model": "b"}']
    for body, code, left in zip(bodies, ("invalid_json", "duplicate_parameter"), "21", strict=True):
        refused = client.post("/v1/classify", body, content_type="application/json")
        assert (refused.status_code, refused.json()["error"]["code"]) == (400, code)
        assert refused["RateLimit-Remaining"] == left
    assert client.get("/v1/models").status_code == 200
    for body in bodies:
        assert client.post("/v1/classify", body, content_type="application/json").status_code == 429
    # A compressed body (refused, not inflated) too: it got its 415 past the rate limit.
    gzipped = client.post(
        "/v1/classify", b"\x1f\x8b", content_type="application/json", HTTP_CONTENT_ENCODING="gzip"
    )
    assert gzipped.status_code == 429 and "Retry-After" in gzipped


def test_per_key_limit_leaves_the_tenants_other_keys_alone(tenant):
    on_plan(tenant, custom_plan(rate_limit_per_minute=100, key_rate_limit_per_minute=3))
    first, second = bearer(make_key(tenant, ["inference"])), bearer(make_key(tenant, ["inference"]))
    assert [first.get("/v1/models").status_code for _ in range(4)] == [200, 200, 200, 429]
    assert second.get("/v1/models").status_code == 200
    assert second.get("/v1/models")["RateLimit-Limit"] == "3"


def test_a_key_refused_by_both_limits_is_told_the_longer_wait(tenant):
    """The tenant's limit (checked first) answered with its own, shorter wait: a client
    that waited it was refused again by its key's."""
    on_plan(tenant, custom_plan(rate_limit_per_minute=8, key_rate_limit_per_minute=5))
    first, second = bearer(make_key(tenant, ["inference"])), bearer(make_key(tenant, ["inference"]))
    assert {first.get("/v1/models").status_code for _ in range(5)} == {200}
    assert {second.get("/v1/models").status_code for _ in range(3)} == {200}
    refused = first.get("/v1/models")
    # The key's next token comes in ~12 s (5 a minute), the tenant's in ~7.5 s (8 a minute).
    assert refused.status_code == 429
    assert (refused["RateLimit-Limit"], int(refused["Retry-After"]) >= 11) == ("5", True)


def test_quota_race_admits_exactly_the_remainder(tenant):
    plan = custom_plan(monthly_hard_cap=1_100)
    on_plan(tenant, plan)
    key = key_of(tenant, make_key(tenant, ["inference"]))
    # 1,000 of the 1,100 already used: 100 remain.
    admitted = limits_admit(api_key=key, request_id="req_pre", inputs=1_000)
    limits_settle(admitted, succeeded=True)

    def attempt(n: int) -> bool:
        try:
            limits_settle(
                limits_admit(api_key=key, request_id=f"req_{n}", inputs=1), succeeded=True
            )
            return True
        except APIError as exc:
            assert exc.status == 402 and exc.code == "quota_exceeded"
            return False

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(attempt, range(1_000)))
    assert sum(results) == 100


def test_a_failed_call_gives_its_reservation_back(tenant):
    on_plan(tenant, custom_plan(monthly_hard_cap=10))
    key = key_of(tenant, make_key(tenant, ["inference"]))
    for _ in range(5):  # each fails: nothing is used up
        limits_settle(limits_admit(api_key=key, request_id="r", inputs=10), succeeded=False)
    with pytest.raises(APIError) as refused:
        limits_admit(api_key=key, request_id="r2", inputs=11)
    assert refused.value.status == 402


def test_the_402_says_what_is_left_when_some_is(tenant):
    on_plan(tenant, custom_plan(monthly_hard_cap=10))
    key = key_of(tenant, make_key(tenant, ["inference"]))
    limits_settle(limits_admit(api_key=key, request_id="r1", inputs=7), succeeded=True)
    with pytest.raises(APIError) as too_many:
        limits_admit(api_key=key, request_id="r2", inputs=5)
    assert too_many.value.status == 402 and too_many.value.code == "quota_exceeded"
    assert "5 inputs exceed the 3 left" in str(too_many.value)
    limits_settle(limits_admit(api_key=key, request_id="r3", inputs=3), succeeded=True)
    with pytest.raises(APIError) as used_up:
        limits_admit(api_key=key, request_id="r4", inputs=1)
    assert "quota of 10 inputs" in str(used_up.value)
    assert "used up" in str(used_up.value)


def test_test_mode_calls_are_counted_apart_from_live_ones(tenant, settings):
    """A customer's tests never use up its production quota, and test-mode calls, which
    are never billed, have an allowance of their own."""
    settings.TEST_MODE_MONTHLY_INPUTS = 6
    on_plan(tenant, custom_plan(monthly_hard_cap=10))
    live = key_of(tenant, make_key(tenant, ["inference"]))
    test = key_of(tenant, make_key(tenant, ["inference"], mode=ApiKey.Mode.TEST))
    limits_settle(limits_admit(api_key=test, request_id="t1", inputs=6), succeeded=True)
    with pytest.raises(APIError) as refused:
        limits_admit(api_key=test, request_id="t2", inputs=1)
    assert refused.value.status == 402 and "test-mode allowance of 6" in str(refused.value)
    # The live quota is untouched: all 10 inputs are there.
    limits_settle(limits_admit(api_key=live, request_id="l1", inputs=10), succeeded=True)
    with pytest.raises(APIError):
        limits_admit(api_key=live, request_id="l2", inputs=1)


def test_test_mode_has_its_own_rate_limit_and_concurrency(tenant):
    """A customer's CI load on test keys took the live concurrency slots and rate limit:
    its production calls got 429s. Each mode has the plan's limits, counted apart."""
    on_plan(tenant, custom_plan(concurrency_cap=1, rate_limit_per_minute=3))
    live = key_of(tenant, make_key(tenant, ["inference"]))
    test = key_of(tenant, make_key(tenant, ["inference"], mode=ApiKey.Mode.TEST))
    held = limits_admit(api_key=test, request_id="t1", inputs=1)  # the test mode's one slot
    with pytest.raises(APIError) as busy:
        limits_admit(api_key=test, request_id="t2", inputs=1)
    assert busy.value.code == "concurrency_limited"
    limits_settle(limits_admit(api_key=live, request_id="l1", inputs=1), succeeded=True)
    limits_settle(held, succeeded=True)
    # The test mode's 3rd request of the minute (the refused t2 took its token too).
    limits_settle(limits_admit(api_key=test, request_id="t3", inputs=1), succeeded=True)
    with pytest.raises(APIError) as throttled:
        limits_admit(api_key=test, request_id="t4", inputs=1)
    assert throttled.value.code == "rate_limited"
    # Live has used one of its three.
    limits_settle(limits_admit(api_key=live, request_id="l2", inputs=1), succeeded=True)


def test_quota_exceeded_over_http_is_402_and_runs_nothing(tenant):
    on_plan(tenant, custom_plan(monthly_hard_cap=3))
    client = bearer(make_key(tenant, ["inference"]))
    body = {"model": "minilm-l6", "inputs": ["a", "b", "c", "d"], "labels": ["x", "y"]}
    response = client.post("/v1/classify", body, format="json")
    assert response.status_code == 402
    assert response.json()["error"] == {
        "type": "payment_required",
        "code": "quota_exceeded",
        "param": None,
        "message": response.json()["error"]["message"],
    }
    # A bad request inside the quota is refunded: the whole quota is still there after it.
    bad = client.post(
        "/v1/classify", {"model": "minilm-l6", "inputs": ["a", "b", "c"]}, format="json"
    )
    assert bad.status_code == 400
    assert "RateLimit-Limit" in bad
    again = client.post("/v1/classify", {"model": "nope", "inputs": ["a", "b", "c"]}, format="json")
    assert again.status_code == 404  # admitted (3 <= 3) and refunded again


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "nope", "inputs": ["a"] * 4, "labels": ["x", "y"]}, 404, "model_not_found"),
        ({"model": "minilm-l6", "inputs": ["a"] * 4}, 400, "missing_labels"),
        ({"model": "minilm-l6", "inputs": ["a"] * 4, "labels": ["x", "y"], "k": 1}, 400,
         "unknown_parameter"),
        ({"model": "minilm-l6", "inputs": ["a", "x" * 10_001, "b", "c"], "labels": ["x", "y"]},
         413, "input_too_long"),
    ],
)  # fmt: skip
def test_a_body_that_could_never_run_says_so_before_the_quota_does(tenant, body, status, code):
    """Over the quota (4 inputs against 3 left), a request with its own errors gets them,
    not a 402 that paying would not cure; a valid one gets the 402."""
    on_plan(tenant, custom_plan(monthly_hard_cap=3))
    client = bearer(make_key(tenant, ["inference"]))
    response = client.post("/v1/classify", body, format="json")
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    valid = {"model": "minilm-l6", "inputs": ["a"] * 4, "labels": ["x", "y"]}
    assert client.post("/v1/classify", valid, format="json").status_code == 402


def test_admission_reads_the_keys_asked_for_in_its_round_trip(tenant):
    key = key_of(tenant, make_key(tenant, ["inference"]))
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    client.set("rc:test:found", b"a row")
    client.delete("rc:test:missing")
    limits_admit(api_key=key, request_id="first")  # loads the script, as a first call does
    admitted = limits_admit(
        api_key=key, request_id="a", inputs=1, prefetch=["rc:test:found", "rc:test:missing"]
    )
    assert admitted.prefetched == {"rc:test:found": b"a row", "rc:test:missing": None}
    assert limits_admit(api_key=key, request_id="b", inputs=1).prefetched is None
    # A Redis that lost its scripts (restarted, flushed): admission loads the script again,
    # decides, and still reads the keys.
    client.script_flush()
    again = limits_admit(api_key=key, request_id="c", inputs=1, prefetch=["rc:test:found"])
    assert again.prefetched == {"rc:test:found": b"a row"} and again.remaining >= 0
    assert limits_admit(api_key=key, request_id="d", prefetch=["rc:test:found"]).prefetched == {
        "rc:test:found": b"a row"
    }


def test_a_cache_hit_that_cannot_be_metered_is_a_503_and_refunds_its_inputs(tenant):
    """The answer is in the cache, but its usage event cannot be written: no answer (it
    would be unmetered), and the inputs reserved for it are given back."""
    import json

    from inference.cache import prefetch_keys
    from workers.contract import USAGE_STREAM

    on_plan(tenant, custom_plan(monthly_hard_cap=2))
    client = bearer(make_key(tenant, ["inference"]))
    body = {"model": "minilm-l6", "inputs": ["one", "two"], "labels": ["x", "y"]}
    store = redis.Redis.from_url(os.environ["REDIS_URL"])
    row = {"label": "x", "score": 0.75, "scores": {"x": 0.75, "y": 0.25}, "truncated": False}
    for key in prefetch_keys(
        tenant_id=tenant.pk,
        livemode=True,
        model_id="minilm-l6",
        inputs=body["inputs"],
        labels=body["labels"],
    ):
        store.set(key, json.dumps({**row, "tokens": 3}), ex=60)
    store.delete(USAGE_STREAM)
    store.set(USAGE_STREAM, "not a stream")  # every XADD fails: WRONGTYPE
    try:
        refused = client.post("/v1/classify", body, format="json")
    finally:
        store.delete(USAGE_STREAM)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "broker_unavailable"
    answered = client.post("/v1/classify", body, format="json")  # the whole quota is there
    assert answered.status_code == 200, answered.json()
    assert answered.json()["usage"] == {"inputs": 2, "tokens": 6, "compute_ms": 0.0, "cached": 2}
    assert store.xlen(USAGE_STREAM) == 1


def test_concurrency_cap(tenant):
    on_plan(tenant, custom_plan(concurrency_cap=2))
    key = key_of(tenant, make_key(tenant, ["inference"]))
    one = limits_admit(api_key=key, request_id="a", inputs=1)
    limits_admit(api_key=key, request_id="b", inputs=1)
    with pytest.raises(APIError) as refused:
        limits_admit(api_key=key, request_id="c", inputs=1)
    assert refused.value.status == 429 and refused.value.code == "concurrency_limited"
    assert refused.value.headers["Retry-After"] == "1"
    limits_settle(one, succeeded=True)
    assert limits_admit(api_key=key, request_id="c", inputs=1)
    # Non-inference calls never take a slot.
    assert limits_admit(api_key=key, request_id="d", inputs=0)


def test_unpaid_beyond_grace_blocks_billable_calls_only(tenant, settings):
    settings.PAST_DUE_GRACE_DAYS = 3
    on_plan(
        tenant,
        Plan.objects.get(slug="pro", is_current=True),
        status="past_due",
        past_due_since=datetime.now(UTC) - timedelta(days=4),
    )
    client = bearer(make_key(tenant, ["admin"]))
    body = {"model": "minilm-l6", "inputs": ["a"], "labels": ["x", "y"]}
    response = client.post("/v1/classify", body, format="json")
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "subscription_unpaid"
    assert client.get("/v1/models").status_code == 200
    assert client.get("/v1/usage").status_code == 200
    # Unpaid comes first, whatever the body (decided before the rate limit: a check of the
    # body there would run unthrottled).
    unknown = {**body, "model": "no-such-model"}
    assert client.post("/v1/classify", unknown, format="json").status_code == 402
    # Test mode is never billed: an unpaid bill does not stop it.
    test = key_of(tenant, make_key(tenant, ["admin"], mode=ApiKey.Mode.TEST))
    limits_settle(limits_admit(api_key=test, request_id="t1", inputs=1, billable=True),
                  succeeded=False)  # fmt: skip
    live = key_of(tenant, make_key(tenant, ["admin"]))
    with pytest.raises(APIError):
        limits_admit(api_key=live, request_id="l1", inputs=1, billable=True)


def test_unpaid_within_grace_still_works(tenant):
    subscribe(tenant, "pro", status="past_due", past_due_since=datetime.now(UTC))
    key = key_of(tenant, make_key(tenant, ["inference"]))
    assert limits_admit(api_key=key, request_id="a", inputs=1, billable=True)


def test_rate_limit_state_lives_in_redis_not_in_the_process(tenant):
    key = key_of(tenant, make_key(tenant, ["inference"]))
    limits_admit(api_key=key, request_id="a")
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    assert client.exists(f"rl:t:{tenant.pk}") and client.exists(f"rl:k:{key.pk}")
    assert client.pttl(f"rl:t:{tenant.pk}") <= 60_000
    assert isinstance(key, ApiKey)


def test_reconciliation_raises_a_lagging_counter_to_the_ledger_and_never_lowers_it(tenant):
    from django.core.management import call_command

    from limits.reconcile import quota_reconcile_tenant
    from metering.services import usage_record_bulk

    on_plan(tenant, custom_plan(monthly_hard_cap=100))
    key = key_of(tenant, make_key(tenant, ["inference"]))
    now = datetime.now(UTC).isoformat()
    usage_record_bulk(
        events=[
            {
                "v": 1,
                "event_id": f"req_q{n}",
                "kind": "inference",
                "tenant_id": tenant.pk,
                "api_key_id": key.pk,
                "livemode": True,
                "model": "minilm-l6",
                "inputs": 30,
                "tokens": 300,
                "compute_ms": 1.0,
                "cached": 0,
                "occurred_at": now,
            }
            for n in range(2)
        ]
    )
    # The counter lost both settles (say Redis was flushed): 60 inputs behind.
    check = quota_reconcile_tenant(api_key=key)
    assert (check.ledger_inputs, check.counter, check.raised_by) == (60, 0, 60)
    with pytest.raises(APIError):
        limits_admit(api_key=key, request_id="big", inputs=41)  # 60 + 41 > 100
    limits_settle(limits_admit(api_key=key, request_id="ok", inputs=40), succeeded=True)
    again = quota_reconcile_tenant(api_key=key)
    assert (again.counter, again.raised_by) == (100, 0)  # ahead of the ledger: left alone
    call_command("reconcile_quotas")


def test_a_new_tenant_is_on_the_free_plans_limits(tenant):
    response = bearer(make_key(tenant, ["inference"])).get("/v1/models")
    free = Plan.objects.get(slug="free", is_current=True)
    assert response["RateLimit-Limit"] == str(free.rate_limit_per_minute)
