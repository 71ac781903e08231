"""A quota reservation whose call never settled (its API process died mid-call) is released
by the sweep of holds: given back where the ledger lacks the call, kept where it has it, and
never given back twice. Against the real Redis and database."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from django.conf import settings

from core.errors import APIError
from limits.holds import HOLD_GRACE_S, hold_rekey, quota_holds_release
from limits.services import limits_admit, limits_settle
from metering.services import usage_record_bulk
from tests.factories import make_key
from tests.limits.test_limits import custom_plan, key_of, on_plan

pytestmark = pytest.mark.django_db


def _past_every_call() -> float:
    """A moment when every call admitted now has ended and its grace has passed."""
    return time.time() + settings.INFERENCE_TIMEOUT_S + 30 + HOLD_GRACE_S + 1


def _refused(key, inputs: int) -> bool:
    try:
        limits_settle(limits_admit(api_key=key, request_id="probe", inputs=inputs),
                      succeeded=False)  # fmt: skip
    except APIError as exc:
        assert exc.status == 402 and exc.code == "quota_exceeded"
        return True
    return False


@pytest.fixture
def capped(tenant):
    on_plan(tenant, custom_plan(monthly_hard_cap=10))
    return key_of(tenant, make_key(tenant, ["inference"]))


def test_a_call_whose_api_died_gets_its_inputs_back_after_its_grace(capped):
    limits_admit(api_key=capped, request_id="req_killed", inputs=10)  # never settled
    assert _refused(capped, 1)
    quota_holds_release()  # the call may still be running: nothing goes back
    assert _refused(capped, 1)
    released = quota_holds_release(now=_past_every_call())
    assert released.refunded >= 1 and released.refunded_inputs >= 10
    assert not _refused(capped, 10)  # the whole cap is there again


def test_a_call_the_worker_answered_stays_counted(capped):
    """The API died after the worker answered: the usage event is in the ledger, so its
    inputs stay used (and are billed)."""
    limits_admit(api_key=capped, request_id="req_answered", inputs=10)
    _answered(capped, "req_answered", 10)
    released = quota_holds_release(now=_past_every_call())
    assert released.kept >= 1
    assert _refused(capped, 1)


def test_a_failed_call_is_given_back_once_whichever_comes_first(capped):
    # The settlement first: the sweep finds no hold of it.
    failed = limits_admit(api_key=capped, request_id="req_failed", inputs=10)
    limits_settle(failed, succeeded=False)
    quota_holds_release(now=_past_every_call())
    limits_settle(limits_admit(api_key=capped, request_id="req_used", inputs=6), succeeded=True)
    assert _refused(capped, 5)  # 6 used of 10: given back once, not twice
    # The sweep first (a settlement late past the call's end): it does not refund again.
    late = limits_admit(api_key=capped, request_id="req_late", inputs=4)
    quota_holds_release(now=_past_every_call())
    limits_settle(late, succeeded=False)
    assert not _refused(capped, 4) and _refused(capped, 5)


def test_an_answered_call_leaves_no_hold(capped):
    limits_settle(limits_admit(api_key=capped, request_id="req_ok", inputs=3), succeeded=True)
    quota_holds_release(now=_past_every_call())
    assert _refused(capped, 8) and not _refused(capped, 7)  # still 3 used


def test_the_operators_command_releases_them_too(capped, monkeypatch):
    from io import StringIO

    from django.core.management import call_command

    limits_admit(api_key=capped, request_id="req_killed_too", inputs=10)
    monkeypatch.setattr(time, "time", lambda real=time.time: real() + 3600)
    out = StringIO()
    call_command("reconcile_quotas", stdout=out)
    monkeypatch.undo()
    assert "unsettled reservations" in out.getvalue()
    assert not _refused(capped, 10)


def test_an_idempotent_retry_after_its_api_died_counts_the_call_once(tenant, monkeypatch):
    """The first attempt's API died mid-call (its hold left); the client retries with the
    same Idempotency-Key, which takes over the first attempt's request id (core.views) once
    the first attempt's lock ran out (its call's end passed), and the ledger row carries that
    id. The call is counted once against the cap, not twice."""
    on_plan(tenant, custom_plan(monthly_hard_cap=20))
    key = key_of(tenant, make_key(tenant, ["inference"]))
    limits_admit(api_key=key, request_id="req_died", inputs=6)  # its API died here
    retry = limits_admit(api_key=key, request_id="req_retry", inputs=6)
    later = time.time() + settings.INFERENCE_TIMEOUT_S + 31  # the first attempt's lock ran out
    monkeypatch.setattr(time, "time", lambda: later)
    hold_rekey(retry, request_id="req_died")  # what the view does once the key is claimed
    monkeypatch.undo()
    _answered(key, "req_died", 6)
    limits_settle(retry, succeeded=True)
    quota_holds_release(now=_past_every_call())
    assert not _refused(key, 14) and _refused(key, 15)  # 6 of 20 used, not 12


def test_a_second_takeover_counts_the_call_once_too(tenant, monkeypatch):
    """Attempts A and B both die; C takes the request id over from B (which had taken it
    from A). Every earlier attempt's hold past its call's end goes, not only the first's."""
    on_plan(tenant, custom_plan(monthly_hard_cap=30))
    key = key_of(tenant, make_key(tenant, ["inference"]))
    window = settings.INFERENCE_TIMEOUT_S + 31
    real = time.time
    limits_admit(api_key=key, request_id="req_a", inputs=6)  # died
    monkeypatch.setattr(time, "time", lambda: real() + window)
    second = limits_admit(api_key=key, request_id="req_b", inputs=6)
    hold_rekey(second, request_id="req_a")  # and died too
    monkeypatch.setattr(time, "time", lambda: real() + 2 * window)
    third = limits_admit(api_key=key, request_id="req_c", inputs=6)
    hold_rekey(third, request_id="req_a")
    _answered(key, "req_a", 6)
    limits_settle(third, succeeded=True)
    quota_holds_release(now=real() + 3 * window + HOLD_GRACE_S)
    assert not _refused(key, 24) and _refused(key, 25)  # 6 of 30 used, not 12 or 18
    # (the clock stays moved on: the rate limiter's state is ahead of the real one)


def test_a_first_attempt_still_running_at_the_takeover_settles_its_own_hold(tenant):
    """A slow first attempt, not a dead one: it fails after the retry took its request id
    over. It gives back its own reservation only; the retry's stays, for the call the ledger
    bills (the first attempt's settlement had released the retry's hold: 0 counted)."""
    on_plan(tenant, custom_plan(monthly_hard_cap=20))
    key = key_of(tenant, make_key(tenant, ["inference"]))
    first = limits_admit(api_key=key, request_id="req_slow", inputs=6)
    retry = limits_admit(api_key=key, request_id="req_retry", inputs=6)
    hold_rekey(retry, request_id="req_slow")
    limits_settle(first, succeeded=False)
    _answered(key, "req_slow", 6)
    limits_settle(retry, succeeded=True)
    quota_holds_release(now=_past_every_call())
    assert not _refused(key, 14) and _refused(key, 15)  # 6 of 20 used


def _answered(key, request_id: str, inputs: int) -> None:
    """The call's usage event, stored (the worker answered it)."""
    usage_record_bulk(
        events=[
            {
                "v": 1,
                "event_id": request_id,
                "kind": "inference",
                "tenant_id": key.tenant_id,
                "api_key_id": key.pk,
                "livemode": True,
                "model": "minilm-l6",
                "inputs": inputs,
                "tokens": 4 * inputs,
                "compute_ms": 1.0,
                "cached": 0,
                "occurred_at": datetime.now(UTC).isoformat(),
            }
        ]
    )


def test_the_same_calls_admission_run_twice_reserves_its_inputs_once(tenant):
    """A Redis stall: the first admission timed out in the API, which admitted the request
    again under the same id, and Redis ran both scripts once it resumed. The second counted
    the inputs again under the same hold, so settling the call left 4 inputs counted for
    good (reconciliation never lowers a counter): the tenant was refused before its cap."""
    on_plan(tenant, custom_plan(monthly_hard_cap=10, concurrency_cap=1))
    key = key_of(tenant, make_key(tenant, ["inference"]))
    first = limits_admit(api_key=key, request_id="req_stalled", inputs=4)
    again = limits_admit(api_key=key, request_id="req_stalled", inputs=4)  # not a 429 either
    assert first.reserved == again.reserved == 4
    limits_settle(again, succeeded=True)
    _answered(key, "req_stalled", 4)
    assert not _refused(key, 6)  # 4 used of 10: 6 more fit
    assert _refused(key, 7)


def test_the_same_calls_admission_run_twice_takes_one_rate_limit_token(tenant):
    """At a rate of 1 a minute the second run was a 429, leaving the first's slot and hold
    taken (a review); below it, it took a second token."""
    on_plan(tenant, custom_plan(rate_limit_per_minute=1, concurrency_cap=1))
    key = key_of(tenant, make_key(tenant, ["inference"]))
    first = limits_admit(api_key=key, request_id="req_stalled", inputs=2)
    again = limits_admit(api_key=key, request_id="req_stalled", inputs=2)
    assert first.remaining == again.remaining == 0
    limits_settle(again, succeeded=True)
    with pytest.raises(APIError) as refused:  # another request: the one token is taken
        limits_admit(api_key=key, request_id="req_next", inputs=1)
    assert refused.value.code == "rate_limited"
