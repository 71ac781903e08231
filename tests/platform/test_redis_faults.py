"""Faults on the classify path: a Redis that cannot be reached is a 503 (or an answer),
never a 500; and a 500 after admission hands back its concurrency slot, its reserved inputs
and its Idempotency-Key. No worker runs here: where an answer is needed, dispatch is
replaced by one that answers as a worker would."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from django.db import OperationalError
from django.test import override_settings
from prometheus_client import REGISTRY
from rest_framework.test import APIClient

from apikeys.services import api_key_authenticate
from core.models import IdempotencyRecord
from inference import dispatch
from inference.cache import cache_lookup
from limits import services as limits
from tests.factories import make_key, subscribe
from workers.contract import CONTRACT_VERSION, ClassifyRequest, ClassifyResult

pytestmark = pytest.mark.django_db

# Nothing listens on port 1: every command fails at once with a connection error.
DOWN_URL = "redis://127.0.0.1:1/0"
BODY = {"model": "minilm-l6", "inputs": ["one", "two", "three"], "labels": ["x", "y"]}


def _lookups(outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "result_cache_lookups_total", {"model": "minilm-l6", "outcome": outcome}
    )
    return value or 0.0


def _answer(request: ClassifyRequest, *, retry: bool) -> ClassifyResult:
    """What a worker would answer: every input the first label."""
    rows = [
        {"index": i, "label": "x", "score": 0.9, "scores": {"x": 0.9, "y": 0.1}, "truncated": False}
        for i in range(len(request["inputs"]))
    ]
    n = len(rows)
    return {
        "v": CONTRACT_VERSION, "request_id": request["request_id"], "model": request["model"],
        "results": rows,  # type: ignore[typeddict-item]
        "usage": {"inputs": n, "tokens": 2 * n, "compute_ms": 1.0, "cached": 0},
    }  # fmt: skip


def _client(tenant: Any) -> tuple[APIClient, str]:
    secret = make_key(tenant, ["inference"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    # A 500 is answered as Django's handler answers it, not raised into the test.
    client.raise_request_exception = False
    return client, secret


@pytest.fixture
def redis_down() -> Iterator[None]:
    """Every Redis client of the classify path (admission, key cache, result cache, broker)
    pointed at a closed port. NOTE: the clients are built once per process and cached; they
    are rebuilt for the outage and again after it, so nothing keeps the dead one."""
    cached = (
        dispatch.redis_client,
        dispatch.give_up_client,
        limits.redis_client,
        limits._admit_script,
    )
    with override_settings(REDIS_URL=DOWN_URL):
        for factory in cached:
            factory.cache_clear()
        try:
            yield
        finally:
            for factory in cached:
                factory.cache_clear()


def test_an_unreadable_cache_is_a_miss_for_every_input(monkeypatch):
    request: Any = {
        "request_id": "req_x", "model": "minilm-l6", "inputs": ["a", "b"], "labels": ["x", "y"],
        "examples": None, "cache_version": "v~tenant",
    }  # fmt: skip
    monkeypatch.setattr("inference.cache.redis_client", lambda: redis.Redis.from_url(DOWN_URL))
    errors = _lookups("error")
    assert cache_lookup(request) == [None, None]
    assert _lookups("error") == errors + 1


@pytest.mark.parametrize(("plan", "code"), [("pro", "broker_unavailable"), ("free", "overloaded")])
def test_classify_with_redis_down_is_a_503_not_a_500(tenant, redis_down, plan, code):
    """The audit's case: admission fails open without Redis (nothing prefetched), the cache
    lookup misses, and dispatch answers that the queue is unreachable. A plan with a hard
    cap is refused at admission instead: its quota cannot be checked, and a Redis that had
    stalled rather than gone would run the call past the cap, billed."""
    if plan != "free":
        subscribe(tenant, plan)
    client, _ = _client(tenant)
    response = client.post("/v1/classify", BODY, format="json")
    assert response.status_code == 503, response.content
    assert response.json()["error"] == {
        "type": "overloaded",
        "code": code,
        "message": response.json()["error"]["message"],
        "param": None,
    }
    assert response["Retry-After"] == "1"
    assert response["X-Request-Id"].startswith("req_")


def test_a_call_is_answered_when_only_the_cache_is_unreadable(tenant, monkeypatch):
    """Few-shot rows are not prefetched by admission: the lookup reads Redis itself."""
    monkeypatch.setattr("inference.cache.redis_client", lambda: redis.Redis.from_url(DOWN_URL))
    monkeypatch.setattr("inference.services.classify_dispatch", _answer)
    client, _ = _client(tenant)
    examples = [{"text": "good", "label": "x"}, {"text": "bad", "label": "y"}]
    errors = _lookups("error")
    response = client.post("/v1/classify", {**BODY, "examples": examples}, format="json")
    assert response.status_code == 200, response.content
    assert [row["label"] for row in response.json()["results"]] == ["x", "x", "x"]
    assert _lookups("error") == errors + 1


def _plan_with_caps(tenant: Any) -> None:
    """A plan whose quota is one request of BODY and whose concurrency cap is one call: any
    slot or reservation a failure kept would refuse the next call."""
    from billing.models import Subscription
    from plans.models import Plan

    slug = f"t{uuid.uuid4().hex[:8]}"
    plan = Plan.objects.create(
        id=f"{slug}@1", slug=slug, name=slug, rate_limit_per_minute=10_000,
        concurrency_cap=1, monthly_hard_cap=len(BODY["inputs"]),
    )  # fmt: skip
    now = datetime.now(UTC)
    Subscription.objects.create(
        tenant=tenant,
        plan=plan,
        current_period_start=now - timedelta(days=1),
        current_period_end=now + timedelta(days=29),
    )


def _held(tenant: Any, secret: str) -> tuple[int, int]:
    """The tenant's calls in flight and inputs counted against its quota, as admission
    keeps them."""
    key = api_key_authenticate(secret=secret)
    period_start = limits.enforcement_for(key).period_start
    store = redis.Redis.from_url(os.environ["REDIS_URL"])
    used = store.get(limits.quota_key(tenant.pk, period_start, livemode=True))
    return int(store.zcard(f"inflight:{tenant.pk}")), int(used or 0)


@pytest.mark.parametrize(
    # Before the key's record is made, and after it (the worker's answer never comes).
    "where",
    ["core.views.idempotency_begin", "inference.services.classify_dispatch"],
)
@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        (RuntimeError("a bug"), 500, "internal_error"),
        (OperationalError("database is locked"), 503, "database_unavailable"),
    ],
    ids=["bug", "database-locked"],
)
def test_a_500_after_admission_hands_back_the_slot_the_quota_and_the_key(
    tenant, monkeypatch, where, fault, status, code
):
    _plan_with_caps(tenant)
    client, secret = _client(tenant)

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise fault

    monkeypatch.setattr("inference.services.classify_dispatch", _answer)
    with monkeypatch.context() as faults:
        faults.setattr(where, fail)
        for _ in range(3):
            response = client.post("/v1/classify", BODY, format="json", HTTP_IDEMPOTENCY_KEY="k")
            assert response.status_code == status
            assert response.json()["error"]["code"] == code
            assert response["X-Request-Id"].startswith("req_")
            assert _held(tenant, secret) == (0, 0)
    # The fault gone, the same key runs again (not a 409 for a key still "in progress", nor
    # a replay of the 500), within the quota and the concurrency cap.
    answered = client.post("/v1/classify", BODY, format="json", HTTP_IDEMPOTENCY_KEY="k")
    assert answered.status_code == 200, answered.content
    assert "Idempotent-Replayed" not in answered
    assert _held(tenant, secret) == (0, len(BODY["inputs"]))
    record = IdempotencyRecord.objects.unscoped().get(tenant=tenant, key="k")
    assert record.state == IdempotencyRecord.State.COMPLETED and record.status_code == 200
