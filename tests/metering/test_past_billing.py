"""Live usage stored after its billing period's late pushes ended (a consumer down for a week,
a dead letter replayed late) is stored, and never pushed nor reconciled: the money review
found no signal of it. It is now logged and counted (usage_events_past_billing_total)."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from django.utils import timezone

from metering.metrics import USAGE_PAST_BILLING
from metering.models import UsageRecord
from tests.metering.test_corrections import call

pytestmark = pytest.mark.django_db


def test_usage_stored_past_its_periods_pushes_is_said_and_counted(tenant, caplog):
    caplog.set_level(logging.WARNING, logger="metering.services")
    before = USAGE_PAST_BILLING._value.get()
    recent = call(tenant, 5, at=timezone.now() - timedelta(days=1))
    test_mode = call(tenant, 5, at=timezone.now() - timedelta(days=90), livemode=False)
    assert USAGE_PAST_BILLING._value.get() == before and not caplog.records
    late = call(tenant, 7, at=timezone.now() - timedelta(days=90))
    assert USAGE_PAST_BILLING._value.get() == before + 1
    [record] = caplog.records
    assert late in record.getMessage() and "never billed" in record.getMessage()
    stored = UsageRecord.objects.for_tenant(tenant).values_list("event_id", flat=True)
    assert {recent, test_mode, late} <= set(stored)  # stored all the same
