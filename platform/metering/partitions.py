"""The ledger partitioned by month on PostgreSQL (DESIGN: "the ledger is partitioned by
month"): each month's rows in a table of their own, so that a period's queries read only
its months, and old months can be detached and archived whole rather than deleted row by
row.

Layout (``ledger_partition``, run once by migration metering 0006):
- ``metering_usagerecord`` is partitioned by range of ``occurred_at`` (UTC months);
- ``metering_usagerecord_legacy`` is the table as it was, attached for every moment before
  the month after the migration (it keeps its rows where they are: no copy);
- ``metering_usagerecord_yYYYYmMM``, one a month, created ahead (``ledger_partitions_ensure``:
  the migration, then the platform beat every day, ``MONTHS_AHEAD`` months ahead);
- ``metering_usagerecord_default`` takes a row no month has a table for yet (a worker whose
  clock is months ahead), so that an insert never fails for want of a partition.

A partitioned table holds no unique index that leaves out its partition key, so the event
id's uniqueness moves to ``metering_ledgereventid``: a trigger before each row inserts its id
there first. A row whose id was there already is refused (an IntegrityError, as the unique
index refused it: an ORM create, a restore that loaded the ids first, a row moved through the
parent), except in a transaction that set ``metering.skip_stored`` (``skip_stored``: the
usage consumer's insert), where it is skipped, as ``ON CONFLICT DO NOTHING`` skipped it: a
redelivered event is a no-op in whichever month it claims to be from, and a writer racing
another with the same id waits for it on that table's primary key, then skips. (A data-only
restore must load the ledger with triggers disabled.)

SQLite (the embedded default) keeps one table with its unique constraint: nothing here runs."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from django.db import DatabaseError, connection, transaction

logger = logging.getLogger(__name__)

PARENT = "metering_usagerecord"
LEGACY = f"{PARENT}_legacy"
DEFAULT = f"{PARENT}_default"
EVENT_IDS = "metering_ledgereventid"
MONTHS_AHEAD = 3

_ONCE = """
CREATE FUNCTION metering_usagerecord_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO metering_ledgereventid (event_id) VALUES (NEW.event_id) ON CONFLICT DO NOTHING;
  IF NOT FOUND THEN  -- stored before
    IF current_setting('metering.skip_stored', true) = 'on' THEN
      RETURN NULL;  -- the usage consumer's insert: the row is skipped
    END IF;
    RAISE unique_violation USING MESSAGE = 'event_id ' || NEW.event_id || ' is in the ledger',
      CONSTRAINT = 'metering_ledgereventid_pkey';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER metering_usagerecord_once BEFORE INSERT ON metering_usagerecord
  FOR EACH ROW EXECUTE FUNCTION metering_usagerecord_once();
"""


@contextlib.contextmanager
def skip_stored() -> Iterator[None]:
    """Within the block, the ledger skips a row whose event id is stored rather than refusing
    it (the usage consumer's insert: a redelivered event is a no-op). Use it inside a
    transaction; it is switched off again after (``SET LOCAL`` lasts to the end of the
    outermost transaction, and would have let a later insert of a stored id be dropped)."""
    if connection.vendor != "postgresql":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL metering.skip_stored = 'on'")
        # Off again only after a success: a failed insert fails its transaction, and the
        # setting goes with it (a statement there would hide the error with its own).
        yield
        cursor.execute("SET LOCAL metering.skip_stored = 'off'")


def month_start(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month(start: datetime) -> datetime:
    return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)


def partition_name(start: datetime) -> str:
    return f"{PARENT}_y{start.year:04d}m{start.month:02d}"


def is_partitioned(cursor: Any) -> bool:
    cursor.execute("SELECT 1 FROM pg_partitioned_table WHERE partrelid = %s::regclass", [PARENT])
    return cursor.fetchone() is not None


def ledger_partition(cursor: Any, *, now: datetime) -> None:
    """Turn the ledger table into a partitioned one, its rows staying where they are (the
    legacy partition). PostgreSQL only; run inside the migration's transaction."""
    cursor.execute(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisprimary, i.indisunique"
        " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE i.indrelid = %s::regclass",
        [PARENT],
    )
    indexes = cursor.fetchall()
    cursor.execute(
        "SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = %s::regclass AND contype IN ('f', 'u')",
        [PARENT],
    )
    constraints = cursor.fetchall()
    cursor.execute(f"SELECT COALESCE(MAX(id), 0) + 1 FROM {PARENT}")  # noqa: S608
    (next_id,) = cursor.fetchone()
    cutover = next_month(month_start(now))

    cursor.execute(f"ALTER TABLE {PARENT} RENAME TO {LEGACY}")
    cursor.execute(f"INSERT INTO {EVENT_IDS} (event_id) SELECT event_id FROM {LEGACY}")  # noqa: S608
    for name, kind, _ in constraints:
        if kind == "u":  # the event id's: kept by the ids table from now on
            cursor.execute(f'ALTER TABLE {LEGACY} DROP CONSTRAINT "{name}"')
    for name, _, primary, unique in indexes:  # free the names for the parent's own
        if not unique or primary:
            cursor.execute(f'ALTER INDEX "{name}" RENAME TO "{("legacy_" + name)[:63]}"')
    cursor.execute(f"ALTER TABLE {LEGACY} ALTER COLUMN id DROP IDENTITY IF EXISTS")
    primary_key = next(("legacy_" + n)[:63] for n, _, p, _ in indexes if p)
    cursor.execute(f'ALTER TABLE {LEGACY} DROP CONSTRAINT "{primary_key}"')
    cursor.execute(f"ALTER TABLE {LEGACY} ADD PRIMARY KEY (id, occurred_at)")

    cursor.execute(
        f"CREATE TABLE {PARENT} (LIKE {LEGACY} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
        " PARTITION BY RANGE (occurred_at)"
    )
    cursor.execute(
        f'ALTER TABLE {PARENT} ADD CONSTRAINT "{PARENT}_pkey" PRIMARY KEY (id, occurred_at)'
    )
    cursor.execute(
        f"ALTER TABLE {PARENT} ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY"
        f" (START WITH {int(next_id)})"
    )
    for name, kind, definition in constraints:
        if kind == "f":
            cursor.execute(f'ALTER TABLE {PARENT} ADD CONSTRAINT "{name}" {definition}')
    for _, definition, primary, unique in indexes:
        if not unique and not primary:  # its definition names the table: now the parent
            cursor.execute(definition)
    # Lookups by event id (the sweep of quota holds, the admin) keep an index.
    cursor.execute(f'CREATE INDEX "{PARENT}_event_id" ON {PARENT} (event_id)')
    cursor.execute(f"CREATE TABLE {DEFAULT} PARTITION OF {PARENT} DEFAULT")
    # Rows a worker clock ahead dated next month or later go to the default partition (before
    # the trigger: their ids are stored), whence their months' tables take them
    # (``_month_create``): the legacy partition ends at the migration's month, however far
    # ahead a clock ran (one row ten years ahead would have stretched it over ten years).
    cursor.execute(
        f"WITH ahead AS (DELETE FROM {LEGACY} WHERE occurred_at >= '{cutover.isoformat()}'"  # noqa: S608
        f" RETURNING *) INSERT INTO {DEFAULT} SELECT * FROM ahead"
    )
    cursor.execute(
        f"ALTER TABLE {PARENT} ATTACH PARTITION {LEGACY}"
        f" FOR VALUES FROM (MINVALUE) TO ('{cutover.isoformat()}')"
    )
    cursor.execute(_ONCE)
    _ensure(cursor, now=now, months_ahead=MONTHS_AHEAD)


def ledger_partitions_ensure(
    *, now: datetime | None = None, months_ahead: int = MONTHS_AHEAD
) -> list[str]:
    """Create the months' tables from this month to ``months_ahead`` months ahead that do
    not exist yet; returns their names. Nothing on SQLite."""
    if connection.vendor != "postgresql":
        return []
    with connection.cursor() as cursor:
        if not is_partitioned(cursor):
            return []
        return _ensure(cursor, now=now or datetime.now(UTC), months_ahead=months_ahead)


def _ensure(cursor: Any, *, now: datetime, months_ahead: int) -> list[str]:
    created = []
    start = month_start(now)
    for _ in range(months_ahead + 1):
        end = next_month(start)
        name = partition_name(start)
        cursor.execute("SELECT to_regclass(%s)", [name])
        if cursor.fetchone()[0] is None and not _covered(cursor, start):
            try:
                with transaction.atomic():
                    # Waits this long at most for the ledger's lock (a long report holding
                    # it): queued behind it, every ledger query would wait too.
                    cursor.execute("SET LOCAL lock_timeout = '10s'")
                    _locks_in_order(cursor)
                    _month_create(cursor, name, start, end)
                created.append(name)
            except DatabaseError:
                logger.exception("ledger partition %s not created (tried again tomorrow)", name)
        start = end
    return created


def _locks_in_order(cursor: Any) -> None:
    """The locks a month's creation needs that the product's own transactions take too, in
    their order: one creation at a time (two would each read the default partition, then
    each wait for the other to give it up), then the tables the ledger's foreign keys name
    (attaching the month clones those keys, which locks them: a transaction that wrote a
    tenant and then read the ledger, waiting for the default partition's lock, deadlocked
    with a creation that held it and waited for the tenants' table), then the default
    partition (``_month_create``)."""
    cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [PARENT])
    cursor.execute(
        "SELECT confrelid::regclass::text FROM pg_constraint"
        " WHERE conrelid = %s::regclass AND contype = 'f'",
        [PARENT],
    )
    for (referenced,) in cursor.fetchall():
        cursor.execute(f"LOCK TABLE {referenced} IN SHARE ROW EXCLUSIVE MODE")


def _month_create(cursor: Any, name: str, start: datetime, end: datetime) -> None:
    """A month's table. Rows of the month already in the default partition (a clock that
    ran ahead) are moved into it first, as a table of its own, then attached: the default
    partition may not keep rows of a month that has a partition, so creating it in place
    failed, every day, and the month's rows kept landing in the default one."""
    bounds = f"FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
    within = f"occurred_at >= '{start.isoformat()}' AND occurred_at < '{end.isoformat()}'"
    cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {DEFAULT} WHERE {within})")  # noqa: S608
    if not cursor.fetchone()[0]:
        cursor.execute(f"CREATE TABLE {name} PARTITION OF {PARENT} FOR VALUES {bounds}")
        return
    # WARNING: no row may land in the default partition between the move and the attach (it
    # would be deleted uncopied, its id kept: lost for good). Its lock first, as the attach
    # takes it anyway: writers of the ledger wait for this transaction (lock_timeout bounds
    # the wait for it).
    cursor.execute(f"LOCK TABLE {DEFAULT} IN ACCESS EXCLUSIVE MODE")
    # (A table of its own has no trigger until it is attached: the rows move as they are.)
    cursor.execute(f"CREATE TABLE {name} (LIKE {PARENT} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    cursor.execute(
        f"WITH moved AS (DELETE FROM {DEFAULT} WHERE {within} RETURNING *)"  # noqa: S608
        f" INSERT INTO {name} SELECT * FROM moved"
    )
    cursor.execute(f"ALTER TABLE {PARENT} ATTACH PARTITION {name} FOR VALUES {bounds}")


def _covered(cursor: Any, moment: datetime) -> bool:
    """Whether a partition other than the default one takes rows of ``moment`` (the legacy
    partition takes every month up to the migration's)."""
    cursor.execute(
        "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
        [PARENT],
    )
    for (bound,) in cursor.fetchall():
        if "MINVALUE" in bound and "TO ('" in bound:
            upper = bound.split("TO ('", 1)[1].split("'", 1)[0]
            cursor.execute("SELECT %s::timestamptz > %s", [upper, moment])
            if cursor.fetchone()[0]:
                return True
    return False
