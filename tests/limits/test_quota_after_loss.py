"""The hard cap on inputs after Redis lost its data (restarted without persistence,
flushed): a missing quota counter is seeded from the ledger before anything is reserved
against it, so a tenant at its cap stays there, and one without usage starts from 0."""

from __future__ import annotations

import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import redis
from django.db import connection

from apikeys.models import ApiKey
from core.errors import APIError
from limits import quota, services
from limits.services import limits_admit, limits_settle, quota_key
from plans.models import Plan
from tests.factories import TenantFactory, make_key
from tests.limits.test_limits import custom_plan, key_of, on_plan

pytestmark = pytest.mark.django_db


def store() -> redis.Redis:
    return redis.Redis.from_url(os.environ["REDIS_URL"])


def lose_redis_data(tenant) -> None:
    """What a Redis restarted without persistence holds of the tenant: nothing (its quota
    counters, live and test mode, its rate limiters and its in-flight set)."""
    client = store()
    for name in client.scan_iter(match=f"*{tenant.pk}*", count=1_000):
        client.delete(name)
    assert not client.keys(f"quota:{tenant.pk}:*")


def ledger(key: ApiKey, inputs: int, *, request_id: str = "", occurred_at: datetime | None = None):
    """Write an answered classification to the ledger, as the usage consumer does."""
    from metering.services import usage_record_bulk

    outcome = usage_record_bulk(
        events=[
            {
                "v": 1,
                "event_id": request_id or f"req_{uuid.uuid4().hex}",
                "kind": "inference",
                "tenant_id": key.tenant_id,
                "api_key_id": key.pk,
                "livemode": key.livemode,
                "model": "minilm-l6",
                "inputs": inputs,
                "tokens": inputs * 10,
                "compute_ms": 1.0,
                "cached": 0,
                "occurred_at": (occurred_at or datetime.now(UTC)).isoformat(),
            }
        ]
    )
    assert outcome.inserted == 1


def answered(key: ApiKey, inputs: int) -> None:
    """A classification admitted, answered and metered."""
    request_id = f"req_{uuid.uuid4().hex}"
    limits_settle(limits_admit(api_key=key, request_id=request_id, inputs=inputs), succeeded=True)
    ledger(key, inputs, request_id=request_id)


def refused(key: ApiKey, inputs: int) -> APIError:
    with pytest.raises(APIError) as refusal:
        limits_admit(api_key=key, request_id=f"req_{uuid.uuid4().hex}", inputs=inputs)
    assert refusal.value.status == 402 and refusal.value.code == "quota_exceeded"
    return refusal.value


def counter(key: ApiKey, period_start: datetime) -> int | None:
    value = store().get(quota_key(key.tenant_id, period_start, livemode=key.livemode))
    return None if value is None else int(value)


def free_cap() -> int:
    cap = Plan.objects.get(slug="free", is_current=True).monthly_hard_cap
    assert cap is not None
    return cap


def test_a_free_tenant_at_its_cap_is_refused_after_a_flush_as_before(tenant):
    """The fault injected: 9,984 of free's 10,000 inputs used, Redis loses everything; the
    tenant is refused at the cap exactly as before, not given another 10,000."""
    cap = free_cap()
    key = key_of(tenant, make_key(tenant, ["inference"]))
    for _ in range(2):
        answered(key, (cap - 16) // 2)
    before = str(refused(key, 17))
    assert "17 inputs exceed the 16 left" in before

    lose_redis_data(tenant)
    after = refused(key, 17)
    assert str(after) == before
    answered(key, 16)
    assert "used up" in str(refused(key, 1))
    start = services.enforcement_for(key).period_start
    assert counter(key, start) == cap


def test_over_http_the_call_over_the_cap_after_a_flush_is_402_and_runs_nothing(tenant):
    cap = free_cap()
    secret = make_key(tenant, ["inference"])
    key = key_of(tenant, secret)
    answered(key, cap - 2)
    lose_redis_data(tenant)
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    body = {"model": "minilm-l6", "inputs": ["a", "b", "c"], "labels": ["x", "y"]}
    response = client.post("/v1/classify", body, format="json")
    assert response.status_code == 402, response.json()
    assert response.json()["error"]["code"] == "quota_exceeded"
    assert "3 inputs exceed the 2 left" in response.json()["error"]["message"]


def test_a_tenant_without_usage_starts_at_0_before_and_after_a_flush(tenant):
    cap = free_cap()
    key = key_of(tenant, make_key(tenant, ["inference"]))
    # Calls that failed use nothing up and leave nothing in the ledger.
    limits_settle(limits_admit(api_key=key, request_id="failed", inputs=cap), succeeded=False)
    lose_redis_data(tenant)
    limits_settle(limits_admit(api_key=key, request_id="whole", inputs=cap), succeeded=True)
    refused(key, 1)


def test_a_new_period_starts_from_0_whatever_the_last_one_used(tenant):
    on_plan(tenant, custom_plan(monthly_hard_cap=100))  # its period began a day ago
    key = key_of(tenant, make_key(tenant, ["inference"]))
    ledger(key, 100, occurred_at=datetime.now(UTC) - timedelta(days=2))  # the last period
    limits_settle(limits_admit(api_key=key, request_id="new", inputs=100), succeeded=True)
    refused(key, 1)


def test_test_mode_counters_are_seeded_from_test_mode_rows_only(tenant, settings):
    settings.TEST_MODE_MONTHLY_INPUTS = 100
    on_plan(tenant, custom_plan(monthly_hard_cap=1_000))
    live = key_of(tenant, make_key(tenant, ["inference"]))
    test = key_of(tenant, make_key(tenant, ["inference"], mode=ApiKey.Mode.TEST))
    answered(live, 900)
    answered(test, 60)
    lose_redis_data(tenant)
    assert "41 inputs exceed the 40 left" in str(refused(test, 41))
    assert "101 inputs exceed the 100 left" in str(refused(live, 101))
    answered(test, 40)
    answered(live, 100)
    refused(test, 1)
    refused(live, 1)


def test_a_new_billing_period_does_not_refill_the_test_mode_allowance(tenant, settings):
    """Test mode's allowance is a calendar month's (UTC): a plan change that begins a new
    billing period (a move to free, a new Stripe subscription) gave it afresh, so a tenant
    could flip plans for unlimited free calls. Live calls count by billing period still."""
    from billing.models import Subscription
    from tenants.selectors import tenant_context_forget

    settings.TEST_MODE_MONTHLY_INPUTS = 6
    on_plan(tenant, custom_plan(monthly_hard_cap=10))
    live_secret = make_key(tenant, ["inference"])
    test_secret = make_key(tenant, ["inference"], mode=ApiKey.Mode.TEST)
    answered(key_of(tenant, test_secret), 6)
    answered(key_of(tenant, live_secret), 10)
    now = datetime.now(UTC)
    Subscription.objects.unscoped().filter(tenant=tenant).update(
        plan=custom_plan(monthly_hard_cap=10),
        current_period_start=now,
        current_period_end=now + timedelta(days=30),
    )
    tenant_context_forget(tenant_id=tenant.pk)
    test, live = key_of(tenant, test_secret), key_of(tenant, live_secret)
    assert "This month's test-mode allowance of 6 inputs is used up" in str(refused(test, 1))
    answered(live, 10)  # the new period's live quota is whole
    refused(live, 1)
    lose_redis_data(tenant)  # seeded again from the ledger: the month's test rows, all of them
    refused(test, 1)
    refused(live, 1)


def test_a_refund_after_a_flush_does_not_reopen_the_quota(tenant):
    """A call admitted before the flush fails after it: its refund must not leave behind a
    counter below zero that admission would take as counted."""
    on_plan(tenant, custom_plan(monthly_hard_cap=100))
    key = key_of(tenant, make_key(tenant, ["inference"]))
    answered(key, 90)
    in_flight = limits_admit(api_key=key, request_id="in-flight", inputs=10)
    lose_redis_data(tenant)
    limits_settle(in_flight, succeeded=False)
    assert counter(key, services.enforcement_for(key).period_start) is None
    assert "11 inputs exceed the 10 left" in str(refused(key, 11))


def test_a_redis_failure_while_seeding_refuses_a_capped_call_as_any_redis_failure(
    tenant, monkeypatch
):
    """A call that reserves inputs against a hard cap is refused (503) when Redis fails,
    never admitted unchecked (a stalled Redis would take its message once it resumes, and
    it would run past the cap, billed); one failing between the ledger read and the seed
    is no different. A call without inputs is served without limits (fail open)."""
    on_plan(tenant, custom_plan(monthly_hard_cap=100))
    key = key_of(tenant, make_key(tenant, ["inference"]))
    answered(key, 100)
    lose_redis_data(tenant)
    read = quota.quota_ledger_inputs
    gone = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)  # nothing listens

    def read_then_lose_redis(**kwargs):
        value = read(**kwargs)
        monkeypatch.setattr(services, "redis_client", lambda: gone)
        monkeypatch.setattr(quota, "redis_client", lambda: gone)
        return value

    monkeypatch.setattr(quota, "quota_ledger_inputs", read_then_lose_redis)
    with pytest.raises(APIError) as unchecked:
        limits_admit(api_key=key, request_id="during-outage", inputs=1)
    assert (unchecked.value.status, unchecked.value.code) == (503, "overloaded")
    assert unchecked.value.headers["Retry-After"] == "1"
    admission = limits_admit(api_key=key, request_id="a-read")  # no inputs: fail open
    assert admission.reserved == 0 and admission.quota_key == ""
    monkeypatch.undo()
    refused(key, 1)  # Redis is back: seeded from the ledger on the next call


def test_a_call_without_a_hard_cap_is_served_when_redis_fails(tenant, monkeypatch):
    """Overage is billed whatever the count: nothing is given away by serving the call."""
    on_plan(tenant, custom_plan(monthly_hard_cap=None))
    key = key_of(tenant, make_key(tenant, ["inference"]))
    gone = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    monkeypatch.setattr(services, "redis_client", lambda: gone)
    admission = limits_admit(api_key=key, request_id="uncapped", inputs=5)
    assert admission.reserved == 0


def test_racing_requests_after_a_flush_admit_no_more_than_remains(transactional_db, monkeypatch):
    """1,000 requests of one input race against a counter the flush removed, 100 inputs
    short of the cap in the ledger: exactly 100 are admitted, and this process reads the
    ledger for them about once, not once each (a thread that found the counter missing just
    before another seeded it, but noted so just after, reads it again: harmless, the seed
    is set only if missing)."""
    tenant = TenantFactory()
    on_plan(tenant, custom_plan(monthly_hard_cap=1_100))  # free's rate would refuse them
    key = key_of(tenant, make_key(tenant, ["inference"]))
    ledger(key, 1_000)
    lose_redis_data(tenant)
    reads = []
    read = quota.quota_ledger_inputs

    def counted(**kwargs):
        reads.append(kwargs)
        return read(**kwargs)

    monkeypatch.setattr(quota, "quota_ledger_inputs", counted)

    def attempt(n: int) -> bool:
        try:
            limits_settle(
                limits_admit(api_key=key, request_id=f"req_{n}", inputs=1), succeeded=True
            )
            return True
        except APIError as exc:
            assert exc.status == 402 and exc.code == "quota_exceeded"
            return False
        finally:
            connection.close()  # this thread's, opened if it read the ledger

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(attempt, range(1_000)))
    assert sum(results) == 100
    assert 1 <= len(reads) <= 8
    assert counter(key, services.enforcement_for(key).period_start) == 1_100


def test_a_renewed_stripe_period_counts_from_its_start_before_its_webhook_comes(tenant):
    """Stripe renewed the period (monthly, on its anchor) and its webhook is not here yet:
    the quota counts from the old period's end. The calendar month stood in: its counter,
    seeded from the ledger since the 1st, held the period before's usage, and a capped plan
    was refused at its new period's start."""
    now = datetime.now(UTC)
    ended = now - timedelta(seconds=5)
    on_plan(
        tenant, custom_plan(monthly_hard_cap=200), stripe_subscription_id="sub_renewed",
        current_period_start=ended - timedelta(days=30), current_period_end=ended,
    )  # fmt: skip
    key = key_of(tenant, make_key(tenant, ["inference"]))
    ledger(key, 200, occurred_at=ended - timedelta(seconds=5))  # the period before, used up
    ledger(key, 50, occurred_at=now - timedelta(seconds=1))  # this one's
    admitted = limits_admit(api_key=key, request_id="req_renewed", inputs=150)
    limits_settle(admitted, succeeded=True)
    assert int(store().get(quota_key(tenant.pk, ended, livemode=True))) == 200
    with pytest.raises(APIError) as refused:
        limits_admit(api_key=key, request_id="req_over", inputs=1)
    assert refused.value.code == "quota_exceeded"
