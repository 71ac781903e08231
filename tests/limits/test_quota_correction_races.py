"""A ledger correction's give-back against the two readers of the ledger that write the
quota counter: reconciliation (raise-only) and admission seeding a missing counter. A reading
taken before the correction must not be written over its give-back: the tenant then lost the
voided inputs' allowance for the rest of the period (a 402 with nothing in the ledger)."""

from __future__ import annotations

import uuid

import pytest

from limits import quota, reconcile
from limits.reconcile import quota_reconcile_tenant
from limits.services import limits_admit, limits_settle
from metering.corrections import usage_record_void
from tests.factories import make_key
from tests.limits.test_limits import custom_plan, key_of, on_plan
from tests.limits.test_quota_after_loss import counter, ledger, lose_redis_data

pytestmark = pytest.mark.django_db


def _answered_60_of_100(tenant):
    sub = on_plan(tenant, custom_plan(monthly_hard_cap=100))
    key = key_of(tenant, make_key(tenant, ["inference"]))
    request_id = f"req_{uuid.uuid4().hex[:24]}"
    limits_settle(limits_admit(api_key=key, request_id=request_id, inputs=60), succeeded=True)
    ledger(key, 60, request_id=request_id)
    return sub, key, request_id


def _voiding_after(read, request_id, capture):
    """``read``, then the void of ``request_id`` and its give-back, before the reading is
    used: the race each reader must survive."""

    voided = []

    def read_then_void(**kwargs):
        value = read(**kwargs)
        if not voided:  # once: a reading after it is taken as it comes
            with capture(execute=True):
                voided.append(usage_record_void(event_id=request_id, reason="refunded"))
        return value

    return read_then_void


def test_a_void_during_reconciliation_keeps_its_inputs_given_back(
    tenant, monkeypatch, django_capture_on_commit_callbacks
):
    sub, key, request_id = _answered_60_of_100(tenant)
    read = reconcile.quota_ledger_inputs
    monkeypatch.setattr(
        reconcile,
        "quota_ledger_inputs",
        _voiding_after(read, request_id, django_capture_on_commit_callbacks),
    )
    stale = quota_reconcile_tenant(api_key=key)
    monkeypatch.undo()
    assert (stale.ledger_inputs, stale.raised_by) == (60, 0)  # read before; not written
    assert counter(key, sub.current_period_start) == 0
    assert quota_reconcile_tenant(api_key=key).raised_by == 0  # the next run agrees
    limits_admit(api_key=key, request_id="req_whole_cap", inputs=100)


def test_a_void_while_admission_seeds_a_missing_counter_is_read_again(
    tenant, monkeypatch, django_capture_on_commit_callbacks
):
    sub, key, request_id = _answered_60_of_100(tenant)
    lose_redis_data(tenant)
    read = quota.quota_ledger_inputs
    reads = []

    def counted(**kwargs):
        reads.append(kwargs)
        return read(**kwargs)

    voiding = _voiding_after(counted, request_id, django_capture_on_commit_callbacks)
    monkeypatch.setattr(quota, "quota_ledger_inputs", voiding)
    limits_settle(limits_admit(api_key=key, request_id="req_seeding", inputs=1), succeeded=True)
    monkeypatch.undo()
    assert len(reads) == 2  # the stale reading (60) thrown away, the ledger read again
    assert counter(key, sub.current_period_start) == 1  # 0 in the ledger, and this call


def test_a_seed_while_a_committed_void_has_not_given_back_yet_waits_for_it(
    tenant, django_capture_on_commit_callbacks, monkeypatch
):
    """The void's row is committed (the ledger nets it) but its give-back has not run: a
    seed of the net figure was then taken off a second time by the give-back, and the
    tenant admitted past its cap. The seed answers 503 until the give-back is done."""
    from core.errors import APIError
    from tests.limits.test_quota_after_loss import ledger as answered_in_ledger

    monkeypatch.setattr(quota, "STALE_S", 0.1)
    sub, key, request_id = _answered_60_of_100(tenant)
    answered_in_ledger(key, 30)  # 90 used, 60 of them about to be voided
    lose_redis_data(tenant)
    with django_capture_on_commit_callbacks(execute=False) as give_backs:
        usage_record_void(event_id=request_id, reason="refunded")
    with pytest.raises(APIError) as waiting:
        limits_admit(api_key=key, request_id="req_during", inputs=1)
    assert (waiting.value.status, waiting.value.code) == (503, "overloaded")
    for give_back in give_backs:
        give_back()
    import time

    time.sleep(quota.STALE_S)  # (this process's 503s for it once a seed gave up)
    from limits.quota import quota_key, quota_pending_key
    from limits.services import redis_client

    counted = quota_key(tenant.pk, sub.current_period_start, livemode=True)
    assert int(redis_client().get(quota_pending_key(counted)) or 0) == 0  # given back
    limits_settle(limits_admit(api_key=key, request_id="req_after", inputs=10), succeeded=True)
    assert counter(key, sub.current_period_start) == 40  # 30 left in the ledger, and these 10


def test_a_give_back_left_pending_answers_503_at_once_not_after_a_queue_of_reads(
    tenant, monkeypatch
):
    """A correction that died between its mark and its give-back: a missing counter is not
    seeded until the mark lapses, and the requests meanwhile are 503s without each reading
    the ledger and waiting in turn (16 took 0.16 to 2.62 s, and every API thread)."""
    import time

    from core.errors import APIError
    from limits.quota import quota_key, quota_pending_key
    from limits.services import redis_client

    monkeypatch.setattr(quota, "STALE_S", 0.3)
    sub, key, _ = _answered_60_of_100(tenant)
    lose_redis_data(tenant)
    counted = quota_key(tenant.pk, sub.current_period_start, livemode=True)
    redis_client().set(quota_pending_key(counted), 1, ex=15)  # left by a dead correction
    reads = []
    read = quota.quota_ledger_inputs
    monkeypatch.setattr(quota, "quota_ledger_inputs", lambda **kw: reads.append(kw) or read(**kw))
    for attempt in ("first", "second"):
        began = time.monotonic()
        with pytest.raises(APIError) as refused:
            limits_admit(api_key=key, request_id=f"req_{attempt}", inputs=1)
        assert (refused.value.status, refused.value.code) == (503, "overloaded")
        waited = time.monotonic() - began
    assert reads == [] and waited < 0.05  # the second: at once, no ledger read
    redis_client().delete(quota_pending_key(counted))  # the mark lapses
    time.sleep(0.3)
    limits_settle(limits_admit(api_key=key, request_id="req_later", inputs=1), succeeded=True)
    assert counter(key, sub.current_period_start) == 61
