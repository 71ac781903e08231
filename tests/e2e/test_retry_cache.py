"""A retry under an Idempotency-Key is answered like any call: from an earlier attempt's
answer where a worker gave one, else with the result cache's rows (a retry skipped the
cache, and inputs answered before were run and billed again: an audit)."""

from __future__ import annotations

import pytest

from metering.models import UsageRecord
from tests.e2e.conftest import drain_usage

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

LABELS = ["refund", "delivery"]


def test_a_retry_after_a_503_takes_the_cached_inputs_from_the_cache(http, secret, settings):
    seen = ["where is my parcel", "I want my money back"]
    body = {"model": "minilm-l6", "inputs": [*seen, "the box came open"], "labels": LABELS}
    with http(secret) as client:
        warm = client.post("/v1/classify", json={**body, "inputs": seen})
        assert warm.status_code == 200 and warm.json()["usage"]["cached"] == 0
        settings.INFERENCE_TIMEOUT_S = 0.001  # the new input's worker call expires
        failed = client.post("/v1/classify", json=body, headers={"Idempotency-Key": "r-1"})
        assert failed.status_code == 503, failed.text
        settings.INFERENCE_TIMEOUT_S = 30
        retried = client.post("/v1/classify", json=body, headers={"Idempotency-Key": "r-1"})
        fresh = client.post("/v1/classify", json=body)
    assert retried.status_code == 200, retried.text
    request_id = failed.headers["X-Request-Id"]
    assert retried.json()["id"] == request_id  # the first attempt's id, as any retry
    assert retried.json()["usage"] == {**retried.json()["usage"], "inputs": 3, "cached": 2}
    assert [r["label"] for r in retried.json()["results"]] == [
        r["label"] for r in fresh.json()["results"]
    ]
    drain_usage()
    row = UsageRecord.objects.unscoped().get(event_id=request_id)
    assert (row.inputs, row.cached) == (3, 2)


def test_a_retry_whose_every_input_is_cached_needs_no_worker(http, secret, settings):
    body = {"model": "minilm-l6", "inputs": ["a parcel went missing"], "labels": LABELS}
    with http(secret) as client:
        settings.INFERENCE_TIMEOUT_S = 0.001
        failed = client.post("/v1/classify", json=body, headers={"Idempotency-Key": "r-2"})
        assert failed.status_code == 503, failed.text
        settings.INFERENCE_TIMEOUT_S = 30
        assert client.post("/v1/classify", json=body).status_code == 200  # now cached
        retried = client.post("/v1/classify", json=body, headers={"Idempotency-Key": "r-2"})
    assert retried.status_code == 200, retried.text
    assert retried.json()["id"] == failed.headers["X-Request-Id"]
    assert retried.json()["usage"]["cached"] == 1
    drain_usage()
    assert UsageRecord.objects.unscoped().get(event_id=retried.json()["id"]).cached == 1


def test_a_retry_serves_an_earlier_attempts_answer_before_the_cache(http, transactional_db):
    """A worker answered (and billed) the earlier attempt after all (its API died before it
    could give the answer): the retry is that answer, even with every input cached since."""
    import json
    import os

    import redis
    from django.utils import timezone

    from core.idempotency import request_fingerprint
    from core.models import IdempotencyRecord
    from tests.factories import TenantFactory, make_key, subscribe
    from workers.contract import result_key

    tenant = TenantFactory()
    subscribe(tenant, "pro")
    secret = make_key(tenant, ["admin"])

    body = {"model": "minilm-l6", "inputs": ["my refund never came"], "labels": LABELS}
    with http(secret) as client:
        cached = client.post("/v1/classify", json=body).json()  # the input is cached now
        IdempotencyRecord.objects.create(
            tenant=tenant, key="r-3", request_id="req_earlier",
            fingerprint=request_fingerprint(method="POST", path="/v1/classify", data=body),
            state=IdempotencyRecord.State.RELEASED, locked_until=timezone.now(),
        )  # fmt: skip
        earlier = {**cached, "request_id": "req_earlier", "v": 1}
        earlier["usage"] = {**cached["usage"], "compute_ms": 7.5}
        store = redis.Redis.from_url(os.environ["REDIS_URL"])
        store.set(result_key("req_earlier"), json.dumps(earlier), ex=60)
        retried = client.post("/v1/classify", json=body, headers={"Idempotency-Key": "r-3"})
    assert retried.status_code == 200, retried.text
    assert retried.json()["id"] == "req_earlier"
    assert retried.json()["usage"] == {**cached["usage"], "compute_ms": 7.5, "cached": 0}
