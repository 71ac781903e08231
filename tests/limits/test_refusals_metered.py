"""A request the rate limit lets through takes its token, whether it is then admitted or
refused for the quota or the concurrency cap: a client hammering a used-up quota met no
limit at all (402s at ~600 a second on a 20-a-minute plan, RateLimit-Remaining stuck; an
audit). A 429 from the rate limit itself still takes nothing, and a request takes one token
however many times it is admitted (an Idempotency-Key duplicate admitted again after such a
refusal took two: a review)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from core.errors import APIError
from core.models import IdempotencyRecord
from limits.services import limits_admit
from tests.factories import bearer, make_key

from .test_limits import custom_plan, key_of, on_plan

pytestmark = pytest.mark.django_db


def test_quota_refusals_count_against_the_rate_limit(tenant):
    on_plan(tenant, custom_plan(monthly_hard_cap=3, rate_limit_per_minute=4))
    client = bearer(make_key(tenant, ["inference"]))
    body = {"model": "minilm-l6", "inputs": ["a", "b", "c", "d"], "labels": ["x", "y"]}
    answers = [client.post("/v1/classify", body, format="json") for _ in range(6)]
    assert [a.status_code for a in answers] == [402, 402, 402, 402, 429, 429]
    assert [a["RateLimit-Remaining"] for a in answers[:4]] == ["3", "2", "1", "0"]
    assert answers[4].json()["error"]["code"] == "rate_limited" and answers[4]["Retry-After"]


def test_concurrency_refusals_count_against_the_rate_limit(tenant):
    on_plan(tenant, custom_plan(concurrency_cap=1, rate_limit_per_minute=3))
    key = key_of(tenant, make_key(tenant, ["inference"]))
    assert limits_admit(api_key=key, request_id="a", inputs=1)
    codes = []
    for request_id in ("b", "c", "d"):
        with pytest.raises(APIError) as refused:
            limits_admit(api_key=key, request_id=request_id, inputs=1)
        codes.append(refused.value.code)
    assert codes == ["concurrency_limited", "concurrency_limited", "rate_limited"]


def test_a_duplicate_refused_then_admitted_again_takes_one_token(tenant):
    from core.idempotency import request_fingerprint

    on_plan(tenant, custom_plan(monthly_hard_cap=3, rate_limit_per_minute=4))
    body = {"model": "minilm-l6", "inputs": ["a"] * 4, "labels": ["x", "y"]}
    IdempotencyRecord.objects.create(
        tenant=tenant, key="busy", request_id="req_x",
        fingerprint=request_fingerprint(method="POST", path="/v1/classify", data=body),
        state=IdempotencyRecord.State.IN_PROGRESS,
        locked_until=timezone.now() + timedelta(seconds=60),
    )  # fmt: skip
    client = bearer(make_key(tenant, ["inference"]))
    answers = [
        client.post("/v1/classify", body, format="json", HTTP_IDEMPOTENCY_KEY="busy")
        for _ in range(5)
    ]
    # Past the quota, each is admitted again as a possible replay: a 409 for the attempt
    # still running, one token each, until the fifth meets the limit.
    assert [a.status_code for a in answers] == [409, 409, 409, 409, 429]
    assert [a["RateLimit-Remaining"] for a in answers[:4]] == ["3", "2", "1", "0"]
