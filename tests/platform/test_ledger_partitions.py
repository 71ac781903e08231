"""The ledger partitioned by month on PostgreSQL: each month's rows in their own table, months
created ahead, and an event id still counted once whichever month it claims."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection, connections

from metering.models import UsageRecord
from metering.partitions import (
    DEFAULT,
    LEGACY,
    PARENT,
    ledger_partitions_ensure,
    month_start,
    next_month,
    partition_name,
)
from metering.services import usage_record_bulk
from tests.platform.test_ledger import event

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="SQLite keeps the ledger in one table"
    ),
]


def _table_of(event_id: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT tableoid::regclass::text FROM {PARENT} WHERE event_id = %s",
            [event_id],
        )
        return str(cursor.fetchone()[0])


def test_each_month_has_its_table_ahead_and_rows_land_in_theirs(tenant):
    now = datetime.now(UTC)
    ahead = next_month(next_month(month_start(now)))
    usage_record_bulk(
        events=[
            event(tenant, 1, occurred_at=now.isoformat()),
            event(tenant, 2, occurred_at=(ahead + timedelta(days=3)).isoformat()),
            event(tenant, 3, occurred_at=(now + timedelta(days=3650)).isoformat()),
            event(tenant, 4, occurred_at="2019-06-01T00:00:00+00:00"),
        ]
    )
    # This month is the migration's: the table as it was takes it, and every month before.
    assert _table_of("req_test1") == LEGACY
    assert _table_of("req_test4") == LEGACY
    assert _table_of("req_test2") == partition_name(ahead)
    assert _table_of("req_test3") == DEFAULT  # a clock ten years ahead: kept, not refused
    rows = UsageRecord.objects.for_tenant(tenant)
    assert rows.count() == 4 and rows.filter(occurred_at__gte=ahead).count() == 2


def test_an_event_is_counted_once_whichever_month_it_claims(tenant):
    """A redelivered event whose time moved (into another month's table) is still a
    duplicate: the event id is unique across the months."""
    now = datetime.now(UTC)
    first = usage_record_bulk(events=[event(tenant, 1, occurred_at=now.isoformat())])
    later = (next_month(month_start(now)) + timedelta(days=1)).isoformat()
    again = usage_record_bulk(events=[event(tenant, 1, occurred_at=later)])
    assert (first.inserted, again.inserted, again.duplicates) == (1, 0, 1)
    assert UsageRecord.objects.for_tenant(tenant).filter(event_id="req_test1").count() == 1


def test_two_writers_of_one_event_store_it_once(tenant):
    """Two consumers storing the same event at once (one redelivered to another): the
    second waits for the first's id and skips its row."""
    barrier = threading.Barrier(2)
    outcomes = []

    def store() -> None:
        try:
            barrier.wait(5)
            outcomes.append(usage_record_bulk(events=[event(tenant, 9)]).inserted)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=store) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == [0, 1]
    assert UsageRecord.objects.for_tenant(tenant).filter(event_id="req_test9").count() == 1


def test_months_are_created_ahead_once():
    first = month_start(datetime.now(UTC) + timedelta(days=200))
    months = [first, next_month(first), next_month(next_month(first))]
    created = ledger_partitions_ensure(now=first + timedelta(days=5), months_ahead=2)
    assert created == [partition_name(month) for month in months]
    assert ledger_partitions_ensure(now=first, months_ahead=2) == []


def test_a_stored_event_id_is_refused_outside_the_consumers_insert(tenant):
    """Only the usage consumer's insert skips a stored id; any other write of one (an ORM
    create, a restore) is refused as the unique index refused it, not dropped silently."""
    from django.db import IntegrityError, transaction

    usage_record_bulk(events=[event(tenant, 5)])
    stored = UsageRecord.objects.for_tenant(tenant).get(event_id="req_test5")
    with pytest.raises(IntegrityError), transaction.atomic():
        UsageRecord.objects.create(
            event_id="req_test5", kind="inference", tenant=tenant, api_key_id="key_x",
            model="minilm-l6", inputs=1, tokens=1, compute_ms=1.0,
            occurred_at=stored.occurred_at + timedelta(days=40),
        )  # fmt: skip
    assert UsageRecord.objects.for_tenant(tenant).filter(event_id="req_test5").count() == 1


def test_a_month_whose_rows_landed_in_the_default_partition_gets_its_table(tenant):
    """A worker clock months ahead put rows in the default partition before their month had
    a table: the month's table is still created, with those rows moved into it."""
    early = month_start(datetime.now(UTC) + timedelta(days=300)) + timedelta(days=2)
    usage_record_bulk(events=[event(tenant, 7, occurred_at=early.isoformat())])
    assert _table_of("req_test7") == DEFAULT
    assert partition_name(month_start(early)) in ledger_partitions_ensure(now=early, months_ahead=0)
    assert _table_of("req_test7") == partition_name(month_start(early))
    usage_record_bulk(events=[event(tenant, 7, occurred_at=early.isoformat())])  # again
    assert UsageRecord.objects.for_tenant(tenant).filter(event_id="req_test7").count() == 1


def test_the_consumers_skip_ends_with_its_insert(tenant):
    """Skipping stored ids is the consumer's insert's alone: a later write of a stored id in
    the same transaction is still refused."""
    from django.db import IntegrityError, transaction

    with pytest.raises(IntegrityError), transaction.atomic():
        usage_record_bulk(events=[event(tenant, 6)])
        UsageRecord.objects.create(
            event_id="req_test6", kind="inference", tenant=tenant, api_key_id="key_x",
            model="minilm-l6", inputs=1, tokens=1, compute_ms=1.0, occurred_at=datetime.now(UTC),
        )  # fmt: skip


def test_a_row_arriving_while_its_month_moves_out_of_the_default_partition_is_kept(
    tenant, monkeypatch
):
    """Another consumer stores a row of the month while its rows move out of the default
    partition: it waits for the move, then lands in the month's table (it had been deleted
    uncopied, its id kept: lost for good)."""
    from metering import partitions

    early = month_start(datetime.now(UTC) + timedelta(days=330)) + timedelta(days=2)
    usage_record_bulk(events=[event(tenant, 7, occurred_at=early.isoformat())])
    real, writers = partitions._month_create, []

    def store_later() -> None:
        try:
            usage_record_bulk(events=[event(tenant, 8, occurred_at=early.isoformat())])
        except Exception:  # a refusal the consumer would retry: stored again below
            usage_record_bulk(events=[event(tenant, 8, occurred_at=early.isoformat())])
        finally:
            connections.close_all()

    def moving(cursor, name, start, end) -> None:
        execute = cursor.execute

        def spy(sql, *args, **kwargs):
            done = execute(sql, *args, **kwargs)
            if sql.startswith(f"LOCK TABLE {DEFAULT}"):
                writers.append(threading.Thread(target=store_later))
                writers[-1].start()
                writers[-1].join(1)  # it waits for the move's lock
            return done

        cursor.execute = spy
        try:
            real(cursor, name, start, end)
        finally:
            cursor.execute = execute

    monkeypatch.setattr(partitions, "_month_create", moving)
    assert ledger_partitions_ensure(now=early, months_ahead=0) == [partition_name(early)]
    writers[0].join(30)
    assert _table_of("req_test7") == _table_of("req_test8") == partition_name(early)


def test_a_month_created_beside_a_tenant_write_that_reads_the_ledger_deadlocks_neither(tenant):
    """A transaction that wrote a tenant and then reads the ledger, while a month's rows move
    out of the default partition: the move waits for it (locks in the same order), and both
    finish (they deadlocked: the move held the default partition and waited for the
    tenants' table, which attaching the month's foreign key locks)."""
    from django.db import transaction

    from tenants.models import Tenant

    early = month_start(datetime.now(UTC) + timedelta(days=360)) + timedelta(days=2)
    usage_record_bulk(events=[event(tenant, 7, occurred_at=early.isoformat())])
    wrote, failures = threading.Event(), []

    def tenant_write_then_ledger_read() -> None:
        try:
            with transaction.atomic():
                Tenant.objects.filter(pk=tenant.pk).update(name="Renamed")
                wrote.set()
                time.sleep(1.5)  # the month's creation starts meanwhile
                UsageRecord.objects.unscoped().filter(event_id="req_test7").count()
        except Exception as exc:
            failures.append(exc)
        finally:
            connections.close_all()

    writer = threading.Thread(target=tenant_write_then_ledger_read)
    writer.start()
    assert wrote.wait(10)
    created = ledger_partitions_ensure(now=early, months_ahead=0)
    writer.join(30)
    assert failures == [] and created == [partition_name(early)]
    assert _table_of("req_test7") == partition_name(early)


def test_an_insert_that_fails_under_the_skip_shows_its_own_error(tenant):
    """The skip is switched off after a success only: after a failed insert the transaction
    is aborted, and switching it off there raised "current transaction is aborted" in place
    of the insert's own error."""
    from decimal import Decimal

    from django.db import IntegrityError, transaction

    from core.rows import insert_new
    from metering.partitions import skip_stored
    from metering.services import LedgerRow

    bad = LedgerRow(
        event_id="req_bad", kind="inference", tenant_id=tenant.pk, api_key_id="key_x",
        livemode=True, model="minilm-l6", compute_ms=1.0, worker="w", cost_micros=Decimal(0),
        pool="cpu", occurred_at=datetime.now(UTC), inputs=-1, tokens=1, cached=0,
        recorded_at=datetime.now(UTC),
    )  # fmt: skip
    # (The check of ordinary rows' quantities: metering migration 0007.)
    with (
        pytest.raises(IntegrityError, match="usage_counts_not_negative"),
        transaction.atomic(),
        skip_stored(),
    ):
        insert_new(UsageRecord, [bad], unique="event_id")
