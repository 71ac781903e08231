"""A month's table of the partitioned ledger (PostgreSQL), made beside long readers of the
ledger without holding them or anyone else up, and made as the months before it were: the
same table, the same rules (the event id counted once, the correction checks)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import DatabaseError, IntegrityError, connection, connections, transaction

from metering.models import UsageRecord
from metering.partitions import (
    PARENT,
    ledger_partitions_ensure,
    month_start,
    next_month,
    partition_name,
)
from metering.services import usage_record_bulk
from tests.platform.test_ledger import event
from tests.platform.test_ledger_partitions import _table_of

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="SQLite keeps the ledger in one table"
    ),
]

# -- a month created beside a long reader of the ledger ---------------------------------------


def _month_of(days: int) -> datetime:
    return month_start(datetime.now(UTC) + timedelta(days=days))


def _while_reading(sql: str, params: list, then) -> Any:
    """``then()`` run while another connection holds a transaction open that read the
    ledger with ``sql`` (a long report)."""

    reading, done = threading.Event(), threading.Event()

    def report() -> None:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(sql, params)
                cursor.fetchall()
                reading.set()
                done.wait(60)
        finally:
            connections.close_all()

    reader = threading.Thread(target=report)
    reader.start()
    try:
        assert reading.wait(10)
        return then()
    finally:
        done.set()
        reader.join(30)


def _seconds_of_a_one_row_read_during(create) -> tuple[float, Any]:
    """How long a one-row read of the ledger takes once ``create()`` (in a thread of its
    own) has been under way for 0.3 s, and what ``create()`` returned."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(create())
        finally:
            connections.close_all()

    creator = threading.Thread(target=run)
    creator.start()
    time.sleep(0.3)
    began = time.monotonic()
    UsageRecord.objects.unscoped().filter(event_id="req_test1").exists()
    waited = time.monotonic() - began
    creator.join(30)
    return waited, outcome[0] if outcome else None


def _old_way(name: str, start: datetime) -> Callable[[], str]:
    """The creation as it was: CREATE TABLE ... PARTITION OF (ACCESS EXCLUSIVE on the ledger),
    with a 3 s lock_timeout (it had 10 s)."""

    def create() -> str:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '3s'")
                cursor.execute(
                    f"CREATE TABLE {name} PARTITION OF {PARENT} FOR VALUES FROM"
                    f" ('{start.isoformat()}') TO ('{next_month(start).isoformat()}')"
                )
            return "created"
        except DatabaseError:
            return "timed out"

    return create


def test_a_month_is_created_beside_a_long_report_and_the_ledger_is_read_meanwhile(tenant):
    """A report holds the ledger (a period's rows read, its transaction open): a month's
    creation used to wait for it, up to its lock timeout, and every query of the ledger
    queued behind the creation (a one-row read 5.4 s). Now the creation takes only a lock
    that readers and writers pass, and the read is not held up."""
    usage_record_bulk(events=[event(tenant, 1)])
    now = datetime.now(UTC)
    period = f"SELECT count(*) FROM {PARENT} WHERE occurred_at >= %s AND occurred_at < %s"
    bounds = [month_start(now), next_month(month_start(now))]

    old, new = _month_of(440), _month_of(400)
    was = _while_reading(period, bounds, lambda: _seconds_of_a_one_row_read_during(
        _old_way(partition_name(old), old)))  # fmt: skip
    assert was[1] == "timed out" and was[0] > 2, was  # the read waited for the creation

    created = lambda: ledger_partitions_ensure(now=new, months_ahead=0)  # noqa: E731
    waited, names = _while_reading(period, bounds, lambda: _seconds_of_a_one_row_read_during(
        created))  # fmt: skip
    assert names == [partition_name(new)] and waited < 1, (names, waited)

    # A report over every month (the default partition too), which the creation must wait
    # for: it gives up after a few tries (tried again the next day), and nobody waits.
    whole, later = f"SELECT count(*) FROM {PARENT}", _month_of(480)
    began = time.monotonic()
    waited, names = _while_reading(whole, [], lambda: _seconds_of_a_one_row_read_during(
        lambda: ledger_partitions_ensure(now=later, months_ahead=0)))  # fmt: skip
    assert names == [] and waited < 1 and time.monotonic() - began < 8, (names, waited)
    assert ledger_partitions_ensure(now=later, months_ahead=0) == [partition_name(later)]


def _catalog(table: str) -> list[Any]:
    """What a month's table is, its own name taken out: columns, defaults, checks, keys,
    indexes, triggers, and what of each it has from the ledger."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT 'column', attname, format_type(atttypid, atttypmod), attnotnull,"
            " pg_get_expr(d.adbin, d.adrelid), attislocal, attinhcount::text"
            " FROM pg_attribute a LEFT JOIN pg_attrdef d ON (d.adrelid, d.adnum) = (a.attrelid,"
            " a.attnum) WHERE attrelid = %(t)s::regclass AND attnum > 0 AND NOT attisdropped"
            " UNION ALL SELECT 'constraint', replace(conname, %(t)s, ''), contype::text,"
            " convalidated, pg_get_constraintdef(oid), conislocal, coninhcount::text"
            " FROM pg_constraint WHERE conrelid = %(t)s::regclass"
            " UNION ALL SELECT 'index', '', '', indisvalid,"
            " replace(pg_get_indexdef(indexrelid), %(t)s, ''), indisprimary,"
            " (SELECT inhparent::regclass::text FROM pg_inherits WHERE inhrelid = indexrelid)"
            " FROM pg_index WHERE indrelid = %(t)s::regclass"
            " UNION ALL SELECT 'trigger', tgname, tgenabled::text, tgparentid <> 0,"
            " replace(pg_get_triggerdef(oid), %(t)s, ''), tgenabled = 'O', ''"
            " FROM pg_trigger WHERE tgrelid = %(t)s::regclass AND NOT tgisinternal"
            " ORDER BY 1, 2, 5",
            {"t": table},
        )
        return [tuple(row) for row in cursor.fetchall()]


def test_a_month_created_is_what_a_month_was_and_keeps_the_ledgers_rules(tenant):

    made, before = _month_of(520), _month_of(560)
    assert ledger_partitions_ensure(now=made, months_ahead=0) == [partition_name(made)]
    with connection.cursor() as cursor:  # a month as CREATE TABLE ... PARTITION OF made it
        cursor.execute(
            f"CREATE TABLE {partition_name(before)} PARTITION OF {PARENT} FOR VALUES FROM"
            f" ('{before.isoformat()}') TO ('{next_month(before).isoformat()}')"
        )
    assert _catalog(partition_name(made)) == _catalog(partition_name(before))

    at = (made + timedelta(days=3)).isoformat()
    assert usage_record_bulk(events=[event(tenant, 1, occurred_at=at)]).inserted == 1
    assert _table_of("req_test1") == partition_name(made)
    # An event counted once whichever month it claims; a stored id written again refused.
    again = usage_record_bulk(events=[event(tenant, 1, occurred_at=before.isoformat())])
    assert (again.inserted, again.duplicates) == (0, 1)
    row = dict(event_id="req_x", kind="inference", tenant=tenant, api_key_id="key_x",
               model="minilm-l6", compute_ms=1.0, occurred_at=made + timedelta(days=1))  # fmt: skip
    with pytest.raises(IntegrityError, match="is in the ledger"), transaction.atomic():
        UsageRecord.objects.create(**{**row, "event_id": "req_test1", "inputs": 1, "tokens": 1})
    # The correction checks: an ordinary row never negative, a correcting row never positive.
    with pytest.raises(IntegrityError, match="usage_counts_not_negative"), transaction.atomic():
        UsageRecord.objects.create(**row, inputs=-1, tokens=1)
    positive = pytest.raises(IntegrityError, match="usage_corrections_not_positive")
    with positive, transaction.atomic():
        UsageRecord.objects.create(**row, inputs=1, tokens=1, corrects="req_test1")
    UsageRecord.objects.create(**row, inputs=-2, tokens=-20, corrects="req_test1")
    assert _table_of("req_x") == partition_name(made)
