"""The walking skeleton, end to end: real HTTP → API → Redis → a real Celery worker running
all-MiniLM-L6-v2 → back to the customer → usage event → consumer → ledger."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import pytest

from metering.models import UsageRecord
from tests.e2e.conftest import drain_usage
from workers.usage import usage_publish

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SENTIMENT = ["positive", "negative"]


def classify(client, body, **headers):
    return client.post("/v1/classify", json=body, headers=headers)


def test_zero_shot_classification(http, secret):
    with http(secret) as client:
        response = classify(
            client,
            {
                "model": "minilm-l6",
                "inputs": [
                    "I absolutely love this, it works wonderfully and makes me happy.",
                    "This is terrible. It broke after a day and I hate it.",
                ],
                "labels": SENTIMENT,
            },
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "classification" and body["model"] == "minilm-l6"
    assert body["id"].startswith("req_") and response.headers["X-Request-Id"] == body["id"]
    assert [row["index"] for row in body["results"]] == [0, 1]
    assert [row["label"] for row in body["results"]] == ["positive", "negative"]
    for row in body["results"]:
        assert set(row["scores"]) == set(SENTIMENT)
        assert math.isclose(sum(row["scores"].values()), 1.0, abs_tol=1e-4)
        assert row["score"] == max(row["scores"].values())
    usage = body["usage"]
    assert usage["inputs"] == 2 and usage["tokens"] > 10 and usage["compute_ms"] > 0
    assert usage["cached"] == 0


def test_few_shot_classification(http, secret):
    examples = [
        {"text": "I was charged twice on my invoice this month", "label": "billing"},
        {"text": "Please refund the duplicate payment on my card", "label": "billing"},
        {"text": "How do I update the credit card used for my subscription?", "label": "billing"},
        {"text": "The app crashes when I open the settings page", "label": "technical"},
        {"text": "I get a 500 error when uploading a file", "label": "technical"},
        {"text": "The sync keeps failing with a timeout on my laptop", "label": "technical"},
    ]
    with http(secret) as client:
        response = classify(
            client,
            {
                "model": "minilm-l6",
                "inputs": [
                    "Why was my card billed two times?",
                    "The page crashes with an error whenever I click save",
                ],
                "examples": examples,
            },
        )
    assert response.status_code == 200, response.text
    assert [row["label"] for row in response.json()["results"]] == ["billing", "technical"]


def test_every_answered_request_is_one_ledger_row(http, secret):
    bodies = [
        {"model": "minilm-l6", "inputs": [f"message number {n}", "another"], "labels": SENTIMENT}
        for n in range(8)
    ]
    with http(secret) as client, ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda b: classify(client, b), bodies))
    failed = [r.text for r in responses if r.status_code != 200]
    assert not failed, failed
    drain_usage()
    ids = {r.json()["id"] for r in responses}
    rows = {row.event_id: row for row in UsageRecord.objects.unscoped().filter(event_id__in=ids)}
    assert set(rows) == ids
    for response in responses:
        body = response.json()
        row = rows[body["id"]]
        assert (row.inputs, row.tokens) == (2, body["usage"]["tokens"])
        assert row.model == "minilm-l6" and row.livemode is True
        assert row.cost_micros > 0 and row.pool == "cpu"  # cost to serve beside the usage


def test_idempotent_replay_answers_once_and_bills_once(http, secret):
    body = {"model": "minilm-l6", "inputs": ["great stuff"], "labels": SENTIMENT}
    with http(secret) as client:
        first = classify(client, body, **{"Idempotency-Key": "retry-1"})
        second = classify(client, body, **{"Idempotency-Key": "retry-1"})
        other = classify(client, {**body, "inputs": ["other"]}, **{"Idempotency-Key": "retry-1"})
    assert first.status_code == second.status_code == 200
    assert second.json() == first.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert other.status_code == 409
    drain_usage()
    assert UsageRecord.objects.unscoped().filter(event_id=first.json()["id"]).count() == 1


def test_only_a_call_that_can_be_retried_leaves_its_answer_for_the_retry(http, secret):
    """A worker keeps an answer under its request id for a retry that comes after the API
    gave up, which only an Idempotency-Key can make (it reuses the request id); any other
    call's copy is kept only as long as its reply (the API's last look, ``give_up``, reads
    it there), not for RESULT_TTL_S."""
    import json
    import os

    import redis

    from workers.contract import result_key

    body = {"model": "minilm-l6", "inputs": ["keep me for a retry"], "labels": SENTIMENT}
    with http(secret) as client:
        plain = classify(client, {**body, "inputs": ["nobody retries me"]})
        keyed = classify(client, body, **{"Idempotency-Key": "keep-1"})
    assert plain.status_code == keyed.status_code == 200
    store = redis.Redis.from_url(os.environ["REDIS_URL"])
    from workers.contract import RESULT_TTL_S

    assert 0 < store.ttl(result_key(plain.json()["id"])) < RESULT_TTL_S - 60
    assert store.ttl(result_key(keyed.json()["id"])) > RESULT_TTL_S - 60
    kept = json.loads(store.get(result_key(keyed.json()["id"])) or "null")
    assert kept["results"] == keyed.json()["results"]


def test_the_same_usage_message_delivered_twice_is_one_row(http, secret):
    with http(secret) as client:
        response = classify(client, {"model": "minilm-l6", "inputs": ["hi"], "labels": SENTIMENT})
    drain_usage()
    row = UsageRecord.objects.unscoped().get(event_id=response.json()["id"])
    event = {
        "v": 1,
        "event_id": row.event_id,
        "kind": "inference",
        "tenant_id": row.tenant_id,
        "api_key_id": row.api_key_id,
        "livemode": row.livemode,
        "model": row.model,
        "inputs": row.inputs,
        "tokens": row.tokens,
        "compute_ms": row.compute_ms,
        "cached": row.cached,
        "occurred_at": row.occurred_at.isoformat(),
        "worker": row.worker,
    }
    usage_publish(event=event)  # the worker's own path, a second time
    drain_usage()
    assert UsageRecord.objects.unscoped().filter(event_id=row.event_id).count() == 1


def test_a_worker_that_cannot_answer_in_time_is_a_503_and_unbilled(http, secret, settings):
    settings.INFERENCE_TIMEOUT_S = 0.001  # expires before any worker can take it
    with http(secret) as client:
        response = classify(client, {"model": "minilm-l6", "inputs": ["x"], "labels": SENTIMENT})
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "overloaded"
    assert response.json()["error"]["code"] in {"worker_timeout", "expired"}
    assert "Retry-After" in response.headers
    drain_usage()
    assert (
        not UsageRecord.objects.unscoped().filter(event_id=response.json().get("id", "")).exists()
    )
    assert (
        not UsageRecord.objects.unscoped()
        .filter(event_id=response.headers["X-Request-Id"])
        .exists()
    )


def test_a_full_queue_is_refused_at_once(http, secret, settings):
    settings.INFERENCE_MAX_QUEUE_DEPTH = 0
    with http(secret) as client:
        response = classify(client, {"model": "minilm-l6", "inputs": ["x"], "labels": SENTIMENT})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "overloaded"


def test_a_repeated_request_is_answered_from_the_cache_and_metered(http, secret):
    body = {
        "model": "minilm-l6",
        "inputs": ["cache me if you can", "  Cache ME if you can "],
        "labels": ["fast", "slow"],
    }
    with http(secret) as client:
        first = classify(client, body)
        second = classify(client, body)
        other_labels = classify(client, {**body, "labels": ["quick", "slow"]})
    assert first.json()["usage"]["cached"] == 0
    hit = second.json()
    assert hit["usage"] == {
        "inputs": 2,
        "tokens": first.json()["usage"]["tokens"],
        "compute_ms": 0.0,
        "cached": 2,
    }
    assert hit["results"] == first.json()["results"]  # normalised: both inputs equal
    assert "worker" not in second.headers["Server-Timing"]
    assert other_labels.json()["usage"]["cached"] == 0  # another task: another key
    drain_usage()
    row = UsageRecord.objects.unscoped().get(event_id=hit["id"])
    assert (row.inputs, row.cached, row.cost_micros, row.pool) == (2, 2, 0, "cache")


def test_one_tenants_cached_answers_never_serve_another(http, secret):
    """A shared hit would tell a tenant that someone else had sent that very text."""
    from tests.factories import TenantFactory, make_key

    body = {"model": "minilm-l6", "inputs": ["the merger memo, draft 7"], "labels": ["a", "b"]}
    other = TenantFactory()
    with http(secret) as mine, http(make_key(other, ["inference"])) as theirs:
        assert classify(mine, body).json()["usage"]["cached"] == 0
        assert classify(mine, body).json()["usage"]["cached"] == 1
        first = classify(theirs, body).json()
        again = classify(theirs, body).json()
    assert (first["usage"]["cached"], again["usage"]["cached"]) == (0, 1)
    assert first["usage"]["compute_ms"] > 0


def test_a_cache_hit_frees_its_concurrency_slot_and_keeps_its_quota(http, transactional_db):
    """A full hit's admission is settled with its usage event, in one round trip: the slot
    comes back (a cap of 1 still admits the next call) and its inputs stay counted (the cap
    stops the call after exactly its inputs' worth)."""
    from plans.models import Plan
    from tests.factories import TenantFactory, make_key, subscribe

    Plan.objects.create(
        id="tight@1", slug="tight", name="Tight", concurrency_cap=1, monthly_hard_cap=8,
        rate_limit_per_minute=1_000,
    )  # fmt: skip
    tenant = TenantFactory()
    subscribe(tenant, "tight")
    body = {"model": "minilm-l6", "inputs": ["a slot", "and a quota"], "labels": ["x", "y"]}
    with http(make_key(tenant, ["inference"])) as client:
        answers = [classify(client, body) for _ in range(4)]  # 8 inputs: the whole quota
        refused = classify(client, body)
    assert [a.status_code for a in answers] == [200] * 4
    assert [a.json()["usage"]["cached"] for a in answers] == [0, 2, 2, 2]
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "quota_exceeded"
    drain_usage()
    rows = UsageRecord.objects.unscoped().filter(tenant=tenant)
    assert sorted(row.cached for row in rows) == [0, 2, 2, 2]


def test_a_replay_is_answered_after_its_call_used_up_the_quota_or_went_unpaid(
    http, transactional_db
):
    """Replaying an answered call runs and bills nothing: it gets the first response even
    once that call used the last of the quota, or the subscription has gone unpaid since,
    while any new call is refused."""
    from datetime import UTC, datetime, timedelta

    from billing.models import Subscription
    from plans.models import Plan
    from tenants.selectors import tenant_context_forget
    from tests.factories import TenantFactory, make_key, subscribe

    Plan.objects.create(
        id="last@1", slug="last", name="Last", monthly_hard_cap=2, rate_limit_per_minute=1_000
    )
    tenant = TenantFactory()
    subscribe(tenant, "last")
    body = {"model": "minilm-l6", "inputs": ["the whole", "quota"], "labels": ["x", "y"]}
    with http(make_key(tenant, ["inference"])) as client:
        first = classify(client, body, **{"Idempotency-Key": "last-call"})
        replay = classify(client, body, **{"Idempotency-Key": "last-call"})
        new = classify(client, body, **{"Idempotency-Key": "another-call"})
        Subscription.objects.unscoped().filter(tenant=tenant).update(
            status="past_due", past_due_since=datetime.now(UTC) - timedelta(days=30)
        )
        tenant_context_forget(tenant_id=tenant.pk)  # as the webhook that marks it does
        unpaid_replay = classify(client, body, **{"Idempotency-Key": "last-call"})
        unpaid_new = classify(client, {**body, "inputs": ["one"]})
    assert first.status_code == 200, first.text
    for again in (replay, unpaid_replay):
        assert again.status_code == 200, again.text
        assert again.json() == first.json()
        assert again.headers["Idempotent-Replayed"] == "true"
        assert "RateLimit-Remaining" in again.headers  # still counted by the rate limiter
    assert new.status_code == 402 and new.json()["error"]["code"] == "quota_exceeded"
    assert unpaid_new.status_code == 402
    assert unpaid_new.json()["error"]["code"] == "subscription_unpaid"
    drain_usage()
    assert UsageRecord.objects.unscoped().filter(tenant=tenant).count() == 1


def test_a_call_is_priced_by_the_plan_it_was_admitted_under_however_late_it_is_recorded(
    http, transactional_db
):
    """The usage consumer records a call after it was answered (seconds later after an
    outage): a plan change in between does not move the call, computed or cached, to the
    new plan."""
    from billing.models import Subscription
    from plans.models import Plan
    from tests.factories import TenantFactory, make_key, subscribe

    tenant = TenantFactory()
    subscribe(tenant, "pro")
    body = {"model": "minilm-l6", "inputs": ["priced as it was made"], "labels": ["x", "y"]}
    with http(make_key(tenant, ["inference"])) as client:
        computed = classify(client, body)
        cached = classify(client, body)
    assert computed.status_code == cached.status_code == 200
    assert cached.json()["usage"]["cached"] == 1
    Subscription.objects.unscoped().filter(tenant=tenant).update(
        plan=Plan.objects.get(pk="scale@1")
    )
    drain_usage()
    rows = UsageRecord.objects.unscoped().filter(tenant=tenant)
    assert sorted((row.cached, row.plan_id) for row in rows) == [(0, "pro@1"), (1, "pro@1")]


def test_labels_the_tokenizer_reads_as_one_are_a_400_and_unbilled(http, secret):
    body = {"model": "minilm-l6", "inputs": ["love it"], "labels": ["\U0001f44d", "\U0001f44e"]}
    with http(secret) as client:
        refused = classify(client, body)
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["param"]) == ("duplicate_label", "labels[1]")
    drain_usage()
    assert not UsageRecord.objects.unscoped().filter(event_id=refused.headers["X-Request-Id"])


def test_a_partial_cache_hit_computes_only_the_misses_and_meters_the_whole_call(http, secret):
    labels = ["cheap", "dear"]
    texts = ["the price halved overnight", "a small fortune for a sandwich", "fair enough"]
    with http(secret) as client:
        first = classify(client, {"model": "minilm-l6", "inputs": texts[:2], "labels": labels})
        mixed = classify(
            client,
            {"model": "minilm-l6", "inputs": [texts[2], texts[1], texts[0]], "labels": labels},
        )
        again = classify(client, {"model": "minilm-l6", "inputs": [texts[2]], "labels": labels})
    assert mixed.status_code == 200, mixed.text
    body = mixed.json()
    # Every row at its place; the two cached rows are the ones the first call got.
    assert [row["index"] for row in body["results"]] == [0, 1, 2]
    before = first.json()["results"]
    for here, there in ((1, 1), (2, 0)):
        assert {**body["results"][here], "index": 0} == {**before[there], "index": 0}
    usage = body["usage"]
    assert (usage["inputs"], usage["cached"]) == (3, 2)
    assert usage["tokens"] > first.json()["usage"]["tokens"] and usage["compute_ms"] > 0
    assert "worker" in mixed.headers["Server-Timing"]  # the miss went to a worker
    # The input computed then is cached now.
    assert again.json()["usage"]["cached"] == 1
    assert again.json()["results"][0] == {**body["results"][0], "index": 0}
    drain_usage()
    row = UsageRecord.objects.unscoped().get(event_id=body["id"])
    assert (row.inputs, row.cached, row.tokens) == (3, 2, usage["tokens"])
    assert row.pool != "cache" and row.cost_micros > 0  # the miss's compute, nothing else


def test_the_int8_tier_is_served_and_metered_under_its_own_model(http, secret):
    body = {
        "model": "minilm-l6-int8",
        "labels": SENTIMENT,
        "inputs": ["I absolutely love this, it works wonderfully and makes me happy."],
    }
    with http(secret) as client:
        listed = [m["id"] for m in client.get("/v1/models").json()["data"]]
        response = classify(client, body)
    assert "minilm-l6-int8" in listed
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["label"] == "positive"
    drain_usage()
    assert UsageRecord.objects.unscoped().get(event_id=response.json()["id"]).model == (
        "minilm-l6-int8"
    )


def test_cache_hit_rate_is_a_metric(http, secret):
    body = {"model": "minilm-l6", "inputs": ["metric me"], "labels": SENTIMENT}
    with http(secret) as client:
        classify(client, body)
        classify(client, body)
        text = client.get("/metrics").text
    assert 'result_cache_lookups_total{model="minilm-l6",outcome="hit"}' in text
    assert 'result_cache_lookups_total{model="minilm-l6",outcome="miss"}' in text
    with http(secret) as client:
        classify(client, {**body, "inputs": ["metric me", "and me too"]})
        text = client.get("/metrics").text
    assert 'result_cache_lookups_total{model="minilm-l6",outcome="partial"}' in text
