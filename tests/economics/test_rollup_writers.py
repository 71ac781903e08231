"""Two usage consumers storing batches at once (the shipped deployment runs two): neither
batch may fail on the other's rollup writes. A failed batch rolled back its ledger rows too,
and its usage waited in Redis until a consumer claimed it again (60 s later, and it could
fail again): late in /v1/usage, in the upcoming invoice and in the pushes."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, connections, transaction

from economics import services
from economics.models import UsageRollup
from metering.services import usage_record_bulk
from tests.economics.test_economics import event
from tests.factories import TenantFactory

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="SQLite runs one writer at a time"
    ),
]


def _in_thread(target, errors: list[BaseException], name: str = "") -> threading.Thread:
    def run() -> None:
        try:
            target()
        except BaseException as exc:  # reported by the test
            errors.append(exc)
        finally:
            connections.close_all()  # this thread's own

    thread = threading.Thread(target=run, name=name or None)
    thread.start()
    return thread


def test_two_batches_making_the_same_new_rollup_row_both_store():
    tenant = TenantFactory()
    first_open, errors = threading.Event(), []

    def first() -> None:
        with transaction.atomic():
            usage_record_bulk(events=[event(tenant, 1, 3, 1)])
            first_open.set()
            time.sleep(0.5)  # the second batch makes the same row meanwhile

    a = _in_thread(first, errors)
    first_open.wait(5)
    b = _in_thread(lambda: usage_record_bulk(events=[event(tenant, 2, 4, 1)]), errors)
    a.join(10), b.join(10)
    assert errors == []
    row = UsageRollup.objects.for_tenant(tenant).get()
    assert (row.requests, row.inputs) == (2, 7)


def test_two_batches_touching_the_same_rows_in_opposite_orders_both_store(monkeypatch):
    one, two = sorted([TenantFactory(), TenantFactory()], key=lambda tenant: tenant.pk)
    usage_record_bulk(events=[event(one, 0, 1, 1), event(two, 0, 1, 1)])  # the rows exist
    holding, errors = threading.Event(), []
    added = services._added

    def slow_first_update(key, sums, latest, netting):
        done = added(key, sums, latest, netting)
        if threading.current_thread().name == "first" and not holding.is_set():
            holding.set()  # it holds one's row: the other batch starts now
            time.sleep(0.5)
        return done

    monkeypatch.setattr(services, "_added", slow_first_update)

    def first() -> None:
        usage_record_bulk(events=[event(one, 1, 2, 1), event(two, 1, 2, 1)])

    a = _in_thread(first, errors, "first")
    holding.wait(5)
    # The same two rows, its events in the other order: it used to lock two's row and wait
    # for one's while the first batch, holding one's, waited for two's (a deadlock).
    b = _in_thread(
        lambda: usage_record_bulk(events=[event(two, 2, 3, 1), event(one, 2, 3, 1)]), errors
    )
    a.join(10), b.join(10)
    assert errors == []
    for tenant in (one, two):
        row = UsageRollup.objects.for_tenant(tenant).get()
        assert (row.requests, row.inputs) == (3, 6)
