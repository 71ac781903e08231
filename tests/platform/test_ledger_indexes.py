"""The ledger's indexes: each one a query needs, none twice (every index is written on every
insert: the usage consumer's rate fell with each). Migration metering 0010 dropped the
tenant's own index (``usage_tenant_time`` leads with it) and PostgreSQL's text-pattern twins;
the months the beat creates later carry the same set as those the migration saw."""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime

import pytest
from django.db import IntegrityError, connection, transaction

from metering.models import UsageRecord
from metering.partitions import PARENT, ledger_partitions_ensure, partition_name
from tests.platform.test_ledger import event

on_postgresql = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="SQLite's ledger is one table: see the test after"
)
# The ledger's indexes, by what they index (PostgreSQL): the key, the event id (its
# uniqueness is the ids table's), the tenant's reads by time, the plan, the API key (the
# admin's search), and the admin's two partial lists.
INTENDED = Counter([
    "UNIQUE btree (id, occurred_at)",
    "btree (event_id)",
    "btree (tenant_id, livemode, occurred_at)",
    "btree (plan_id)",
    "btree (api_key_id)",
    "btree (id) WHERE (NOT ((corrects)::text = ''::text))",
    "btree (id) WHERE (NOT ((kind)::text = 'inference'::text))",
])  # fmt: skip
# What the ledger carried up to migration 0010, besides.
REDUNDANT = Counter([
    "btree (tenant_id)",
    "btree (tenant_id varchar_pattern_ops)",
    "btree (api_key_id varchar_pattern_ops)",
    "btree (event_id varchar_pattern_ops)",
])  # fmt: skip
BEFORE, AFTER = "0009_ledger_admin_indexes", "0010_ledger_redundant_indexes"


def _indexes(table: str) -> Counter[str]:
    """``table``'s indexes by definition, its own name and the table's left out."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = %s::regclass",
            [table],
        )
        definitions = [definition for (definition,) in cursor.fetchall()]
    shape = re.compile(r"CREATE (UNIQUE )?INDEX \S+ ON (?:ONLY )?\S+ USING (.*)")
    return Counter(f"{m[1] or ''}{m[2]}" for m in map(shape.fullmatch, definitions) if m)


def _partitions() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = %s::regclass",
            [PARENT],
        )
        return [name for (name,) in cursor.fetchall()]


def _unattached() -> list[str]:
    """Indexes of the ledger's partitions that no index of the ledger has: each one written
    on every insert into its month, and dropped with none of the ledger's."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.indexrelid::regclass::text FROM pg_index i JOIN pg_inherits p"
            " ON p.inhrelid = i.indrelid AND p.inhparent = %s::regclass"
            " WHERE NOT EXISTS (SELECT 1 FROM pg_inherits a WHERE a.inhrelid = i.indexrelid)",
            [PARENT],
        )
        return [name for (name,) in cursor.fetchall()]


def _migrate(name: str) -> None:
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    executor.migrate([("metering", name)])


@on_postgresql
@pytest.mark.django_db(transaction=True)
def test_the_ledger_and_every_month_carry_each_index_once():
    # A month the beat creates later (attached to the ledger: it takes the ledger's indexes).
    later = datetime(2099, 1, 1, tzinfo=UTC)
    assert ledger_partitions_ensure(now=later, months_ahead=0) == [partition_name(later)]
    try:
        assert _indexes(PARENT) == INTENDED
        assert partition_name(later) in _partitions()
        for partition in _partitions():  # the legacy table, the months, the default one
            assert _indexes(partition) == INTENDED, partition
        assert _unattached() == []
        # The event ids table: its primary key alone (the trigger writes it on each insert).
        assert _indexes("metering_ledgereventid") == Counter(["UNIQUE btree (event_id)"])
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE {partition_name(later)}")


@on_postgresql
@pytest.mark.django_db(transaction=True)
def test_the_migration_goes_back_and_forth_on_a_ledger_with_rows(tenant):
    from metering.services import usage_record_bulk

    usage_record_bulk(events=[event(tenant, i) for i in range(5)])
    _migrate(BEFORE)
    try:  # back: the indexes as they were, on every month (built again, attached)
        assert _indexes(PARENT) == INTENDED + REDUNDANT
        for partition in _partitions():
            assert _indexes(partition) == INTENDED + REDUNDANT, partition
        assert _unattached() == []
        assert _indexes("metering_ledgereventid") == Counter(
            ["UNIQUE btree (event_id)", "btree (event_id varchar_pattern_ops)"]
        )
    finally:
        _migrate(AFTER)
    for partition in [PARENT, *_partitions()]:
        assert _indexes(partition) == INTENDED, partition
    assert _unattached() == []
    assert UsageRecord.objects.for_tenant(tenant).count() == 5


@pytest.mark.django_db(transaction=True)
def test_an_event_id_is_still_stored_once(tenant):
    """Dropping the event id's pattern index leaves its uniqueness: the unique constraint on
    SQLite, the ids table and its trigger on PostgreSQL."""
    from metering.services import usage_record_bulk

    assert usage_record_bulk(events=[event(tenant, 1)]).inserted == 1
    again = usage_record_bulk(events=[event(tenant, 1)])
    assert (again.inserted, again.duplicates) == (0, 1)
    row = UsageRecord.objects.for_tenant(tenant).get(event_id="req_test1")
    row.pk = None
    with pytest.raises(IntegrityError), transaction.atomic():
        row.save()
    assert UsageRecord.objects.for_tenant(tenant).filter(event_id="req_test1").count() == 1


@pytest.mark.skipif(connection.vendor != "sqlite", reason="PostgreSQL's: the tests above")
@pytest.mark.django_db
def test_sqlite_keeps_the_unique_event_id_and_one_index_a_column():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = %s",
            [PARENT],
        )
        indexes = dict(cursor.fetchall())
    assert set(indexes) == {
        "sqlite_autoindex_metering_usagerecord_1",  # the event id's UNIQUE
        "usage_tenant_time", "usage_plan", "usage_api_key", "usage_corrections",
        "usage_not_inference",
    }  # fmt: skip
