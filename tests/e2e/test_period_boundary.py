"""A call is dated when it was admitted, not when a worker answered it: one admitted in the
last moments of a billing period and answered in the next is counted against the quota of
the period that reserved its inputs and billed in that period, once."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from apikeys.services import api_key_authenticate
from billing.rating import billable_usage
from inference.services import classify
from limits.services import limits_admit, limits_settle
from metering.models import UsageRecord
from plans.models import Plan
from tests.e2e.conftest import drain_usage
from tests.factories import TenantFactory, make_key, subscribe


def test_a_call_answered_after_its_period_ended_is_billed_in_the_period_that_admitted_it(
    inference_worker, transactional_db
):
    tenant = TenantFactory()
    start = datetime.now(UTC) - timedelta(days=3)
    end = datetime.now(UTC) + timedelta(seconds=1)
    subscribe(tenant, "pro", current_period_start=start, current_period_end=end)
    key = api_key_authenticate(secret=make_key(tenant, ["inference"]))
    admission = limits_admit(api_key=key, request_id="req_straddles", inputs=2, billable=True)
    time.sleep(max((end - datetime.now(UTC)).total_seconds(), 0) + 0.1)  # the period ends
    answer = classify(
        tenant=tenant,
        api_key=key,
        request_id="req_straddles",
        model_id="minilm-l6",
        inputs=["admitted in time", "answered late"],
        labels=["x", "y"],
        examples=None,
        is_retry=False,
        admission=admission,
    )
    limits_settle(admission, succeeded=True)
    assert datetime.now(UTC) > end
    assert answer["usage"]["inputs"] == 2
    drain_usage()
    row = UsageRecord.objects.unscoped().get(event_id="req_straddles")
    assert start <= row.occurred_at < end  # answered after the period: dated when admitted
    pro = Plan.objects.get(slug="pro", is_current=True)
    closed = billable_usage(tenant=tenant, plan=pro, start=start, end=end)
    after = billable_usage(tenant=tenant, plan=pro, start=end, end=end + timedelta(days=30))
    assert sum(usage.inputs["standard"] for usage in closed.values()) == 2
    assert not after  # not billed again in the period it was answered in
