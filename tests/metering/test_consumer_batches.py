"""The usage consumer gathers what arrives within its flush interval into one store, read
once: a flush costs about the same however few events it stores."""

from __future__ import annotations

import threading
import time

import pytest

from metering.consumer import UsageConsumer
from metering.models import UsageRecord
from tests.platform.test_ledger import empty_queue, event, publish  # noqa: F401 - its fixture

pytestmark = pytest.mark.django_db


def test_a_trickle_of_events_is_stored_together_within_the_flush_interval(tenant):
    """Events arriving one by one are gathered for the flush interval after the first and
    stored in one transaction (a flush costs about the same whatever it stores), none lost."""
    stored: list[int] = []

    class Counting(UsageConsumer):
        def flush(self, entries):
            stored.append(len(entries)) if entries else None
            return super().flush(entries)

    def trickle() -> None:
        for n in range(10):
            publish(event(tenant, n))
            time.sleep(0.01)

    sender = threading.Thread(target=trickle)
    sender.start()
    assert Counting(flush_interval=1.0).run(until_idle=True) == 10
    sender.join()
    assert stored == [10]
    assert UsageRecord.objects.for_tenant(tenant).count() == 10
