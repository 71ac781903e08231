"""A call answered from the result cache alone is metered in its admission round trip
(``limits.hits``): exactly once, never for a call refused after all, and never twice when
its admission runs again."""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import pytest
import redis

from inference.cache import hit_event_parts, prefetch_keys
from limits.hits import HitMeter
from limits.services import HOLDS_KEY, limits_admit
from tests.factories import bearer, key_id_of, make_key
from tests.limits.test_limits import custom_plan, key_of, on_plan
from workers.contract import USAGE_STREAM

pytestmark = pytest.mark.django_db

BODY = {"model": "minilm-l6", "inputs": ["one", "two"], "labels": ["x", "y"]}
ROW = {"label": "x", "score": 0.75, "scores": {"x": 0.75, "y": 0.25}, "truncated": False}


def store() -> redis.Redis:
    return redis.Redis.from_url(os.environ["REDIS_URL"])


def cached(tenant, body: dict[str, Any] = BODY, *, livemode: bool = True) -> list[str]:
    """The rows of ``body``'s inputs put in the result cache (3 tokens each); their keys."""
    keys = prefetch_keys(
        tenant_id=tenant.pk, livemode=livemode, model_id=body["model"],
        inputs=body["inputs"], labels=body["labels"],
    )  # fmt: skip
    for key in keys:
        store().set(key, json.dumps({**ROW, "tokens": 3}), ex=60)
    return keys


def events(tenant) -> list[dict[str, Any]]:
    """The usage events of ``tenant``'s calls (the stream is shared by the suite's tests)."""
    found = [json.loads(fields[b"event"]) for _, fields in store().xrange(USAGE_STREAM)]
    return [event for event in found if event["tenant_id"] == tenant.pk]


def holds(tenant) -> int:
    return sum(tenant.pk.encode() in hold for hold in store().zrange(HOLDS_KEY, 0, -1))


def quota_counter(tenant) -> int:
    counters = [k for k in store().scan_iter(f"quota:{tenant.pk}:*") if not k.count(b":") > 2]
    return sum(int(store().get(key) or 0) for key in counters)


def meter_for(tenant, key, request_id: str, confirm: bytes | None = None) -> HitMeter:
    """What the classify view asks admission to meter for ``BODY`` (two rows)."""
    call = {"request_id": request_id, "tenant_id": tenant.pk, "api_key_id": key.pk,
            "livemode": True, "model": "minilm-l6"}  # fmt: skip
    event = functools.partial(hit_event_parts, call, 2)
    return HitMeter(rows=2, stream=USAGE_STREAM, event=event, confirm=confirm)


def test_a_full_cache_hit_is_metered_once_with_its_admission(tenant):
    on_plan(tenant, custom_plan(monthly_hard_cap=100, concurrency_cap=5))
    cached(tenant)
    response = bearer(make_key(tenant, ["inference"])).post("/v1/classify", BODY, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["usage"] == {"inputs": 2, "tokens": 6, "compute_ms": 0.0, "cached": 2}
    assert [row["label"] for row in response.json()["results"]] == ["x", "x"]
    [event] = events(tenant)
    assert event["event_id"] == response.json()["id"] == response["X-Request-Id"]
    assert (event["inputs"], event["tokens"], event["cached"]) == (2, 6, 2)
    assert (event["cost_micros"], event["pool"], event["compute_ms"]) == ("0", "cache", 0.0)
    assert event["tenant_id"] == tenant.pk and event["model"] == "minilm-l6"
    assert event["plan_id"].startswith("t") and event["livemode"] is True
    # Counted against the cap for good, and nothing left held for the call.
    assert quota_counter(tenant) == 2
    assert holds(tenant) == 0
    assert store().zcard(f"inflight:{tenant.pk}") == 0


def test_a_hit_admitted_again_after_a_lost_reply_is_metered_once(tenant):
    on_plan(tenant, custom_plan(monthly_hard_cap=100))
    key = key_of(tenant, make_key(tenant, ["inference"]))
    rows = cached(tenant)
    meter = meter_for(tenant, key, "req_again")
    first = limits_admit(api_key=key, request_id="req_again", inputs=2, prefetch=rows,
                         hit_meter=meter)  # fmt: skip
    # Its reply lost in a Redis stall, the same admission is run again: it finds the call
    # metered, and neither bills nor counts it twice.
    again = limits_admit(api_key=key, request_id="req_again", inputs=2, prefetch=rows,
                         hit_meter=meter, token_taken=True)  # fmt: skip
    assert first.metered and first.settled and again.metered and again.settled
    assert [e["event_id"] for e in events(tenant)] == ["req_again"]
    assert quota_counter(tenant) == 2


@pytest.mark.parametrize(
    ("terms", "status", "code", "counted"),
    [
        ({"monthly_hard_cap": 3}, 402, "quota_exceeded", 2),
        ({"rate_limit_per_minute": 1}, 429, "rate_limited", 0),  # (no cap: nothing counted)
    ],
)
def test_a_refused_hit_bills_nothing(tenant, terms, status, code, counted):
    on_plan(tenant, custom_plan(**terms))
    client = bearer(make_key(tenant, ["inference"]))
    cached(tenant)
    assert client.post("/v1/classify", BODY, format="json").status_code == 200
    refused = client.post("/v1/classify", BODY, format="json")
    assert refused.status_code == status and refused.json()["error"]["code"] == code
    assert len(events(tenant)) == 1 and quota_counter(tenant) == counted


def test_a_partial_hit_is_not_metered_by_admission(tenant):
    on_plan(tenant, custom_plan(monthly_hard_cap=100))
    key = key_of(tenant, make_key(tenant, ["inference"]))
    rows = cached(tenant)
    store().delete(rows[1])
    meter = meter_for(tenant, key, "req_half")
    admitted = limits_admit(api_key=key, request_id="req_half", inputs=2, prefetch=rows,
                            hit_meter=meter)  # fmt: skip
    assert not admitted.metered and not admitted.settled and admitted.reserved == 2
    assert events(tenant) == [] and holds(tenant) == 1  # held until a worker answers


def test_a_cached_call_refused_for_its_query_bills_nothing(tenant):
    cached(tenant)
    client = bearer(make_key(tenant, ["inference"]))
    refused = client.post("/v1/classify?stream=true", BODY, format="json")
    assert refused.status_code == 400, refused.json()
    assert events(tenant) == [] and quota_counter(tenant) == 0


def test_a_cached_call_with_a_revoked_key_bills_nothing(api, tenant):
    secret = make_key(tenant, ["inference"])
    client = bearer(secret)
    cached(tenant)
    for _ in range(2):  # the key is now served from this process's key cache
        assert client.post("/v1/classify", BODY, format="json").status_code == 200
    assert api.delete(f"/v1/api-keys/{key_id_of(secret)}").status_code == 200
    refused = bearer(secret).post("/v1/classify", BODY, format="json")
    assert refused.status_code == 401, refused.json()
    assert len(events(tenant)) == 2


def test_an_idempotent_cached_call_replayed_bills_once(tenant):
    cached(tenant)
    client = bearer(make_key(tenant, ["inference"]))
    headers = {"HTTP_IDEMPOTENCY_KEY": "retry-me"}
    first = client.post("/v1/classify", BODY, format="json", **headers)
    replay = client.post("/v1/classify", BODY, format="json", **headers)
    assert first.status_code == replay.status_code == 200
    assert replay["Idempotent-Replayed"] == "true" and replay.json() == first.json()
    assert [e["event_id"] for e in events(tenant)] == [first.json()["id"]]


def test_a_hit_for_a_key_changed_since_is_not_metered_by_admission(tenant):
    key = key_of(tenant, make_key(tenant, ["inference"]))
    rows = cached(tenant)
    store().set("keygen:test", b"2")
    meter = meter_for(tenant, key, "req_gen", confirm=b"1")
    admitted = limits_admit(api_key=key, request_id="req_gen", inputs=2,
                            prefetch=[*rows, "keygen:test"], hit_meter=meter)  # fmt: skip
    assert not admitted.metered and events(tenant) == []


class _Flaky:
    """The admission script, whose reply is lost (``ran``: after it ran in Redis) or which
    cannot connect, for its first ``times`` calls (every call: -1)."""

    def __init__(self, real: Any, error: Exception, *, ran: bool, times: int) -> None:
        self.real, self.error, self.ran, self.times, self.calls = real, error, ran, times, 0

    def __call__(self, **kwargs: Any) -> Any:
        self.calls += 1
        if self.times == 0:
            return self.real(**kwargs)
        self.times -= 1
        if self.ran:
            self.real(**kwargs)
        raise self.error


@pytest.fixture
def flaky_admission(monkeypatch):
    from limits import services

    def install(error: Exception, *, ran: bool, times: int) -> _Flaky:
        flaky = _Flaky(services._admit_script(), error, ran=ran, times=times)
        monkeypatch.setattr(services, "_admit_script", lambda: flaky)
        return flaky

    return install


def test_a_hit_whose_admission_reply_was_lost_is_answered_and_billed_once(tenant, flaky_admission):
    on_plan(tenant, custom_plan(monthly_hard_cap=100))
    cached(tenant)
    client = bearer(make_key(tenant, ["inference"]))
    first = client.post("/v1/classify", BODY, format="json")  # (the quota counter is seeded)
    flaky = flaky_admission(redis.TimeoutError("Timeout reading from socket"), ran=True, times=1)
    response = client.post("/v1/classify", BODY, format="json")
    assert response.status_code == 200, response.json()
    assert flaky.calls == 2
    answered = [first.json()["id"], response.json()["id"]]
    assert [e["event_id"] for e in events(tenant)] == answered
    assert quota_counter(tenant) == 4


def test_a_hit_never_confirmed_is_a_503_that_says_it_may_be_billed(
    tenant, flaky_admission, settings
):
    settings.INFERENCE_TIMEOUT_S = 0.5
    cached(tenant)
    client = bearer(make_key(tenant, ["inference"]))
    assert client.post("/v1/classify", BODY, format="json").status_code == 200
    flaky_admission(redis.TimeoutError("Timeout reading from socket"), ran=True, times=-1)
    response = client.post("/v1/classify", BODY, format="json")
    assert response.status_code == 503, response.json()
    error = response.json()["error"]
    assert error["code"] == "broker_unavailable" and "may have been" in error["message"]
    assert len(events(tenant)) == 2  # (the residual: Redis ran it, and never said so)


def test_a_redis_that_cannot_be_reached_is_not_waited_for(tenant, flaky_admission):
    on_plan(tenant, custom_plan(monthly_hard_cap=100))
    cached(tenant)
    refused = redis.ConnectionError("Error 111 connecting to localhost:1. Connection refused.")
    flaky = flaky_admission(refused, ran=False, times=-1)
    response = bearer(make_key(tenant, ["inference"])).post("/v1/classify", BODY, format="json")
    assert response.status_code == 503 and flaky.calls == 1  # nothing was sent: not retried
    assert "Nothing was run or billed" in response.json()["error"]["message"]
    assert events(tenant) == []
