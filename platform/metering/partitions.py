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
import time
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
# A month's creation waits this long at most for each lock it needs, and is tried this many
# times, LOCK_RETRY_S x the try's number apart.
LOCK_TIMEOUT_MS = 1000
LOCK_TRIES = 3
LOCK_RETRY_S = 0.5
LOCK_NOT_AVAILABLE = "55P03"  # (SQLSTATE of a lock_timeout or a NOWAIT lock refused)

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
        missing = cursor.fetchone()[0] is None and not _covered(cursor, start)
        if missing and _month_add(cursor, name, start, end):
            created.append(name)
        start = end
    return created


def _month_add(cursor: Any, name: str, start: datetime, end: datetime) -> bool:
    """A month's table, in a transaction of its own, tried ``LOCK_TRIES`` times when a lock
    it needs is held (a long report, a dump); after that, tried again at the next run (the
    beat's, daily: months are made ``MONTHS_AHEAD`` ahead, so a day lost costs nothing)."""
    for attempt in range(1, LOCK_TRIES + 1):
        try:
            with transaction.atomic():
                # Waits this long at most for a lock (the default partition's is not waited
                # for at all: ``_month_create``): queued behind a long report, every query
                # of the ledger waited for the creation too (up to 10 s, a one-row read 5.4 s).
                cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_MS}ms'")
                _locks_in_order(cursor)
                cursor.execute("SELECT to_regclass(%s)", [name])
                if cursor.fetchone()[0] is None:  # (another process's run made it meanwhile)
                    _month_create(cursor, name, start, end)
            return True
        except DatabaseError as exc:
            busy = getattr(exc.__cause__, "sqlstate", None) == LOCK_NOT_AVAILABLE
            if busy and attempt < LOCK_TRIES:
                time.sleep(LOCK_RETRY_S * attempt)
                continue
            logger.exception("ledger partition %s not created (tried again tomorrow)", name)
            return False
    return False


def _locks_in_order(cursor: Any) -> None:
    """The locks a month's creation needs that the product's own transactions take too, in
    their order: one creation at a time (two would each read the default partition, then
    each wait for the other to give it up), then the tables the ledger's foreign keys name
    (attaching the month clones those keys, which locks them: a transaction that wrote a
    tenant and then read the ledger, waiting for the default partition's lock, deadlocked
    with a creation that held it and waited for the tenants' table), then the ledger itself,
    then the default partition (``_month_create``)."""
    cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [PARENT])
    cursor.execute(
        "SELECT confrelid::regclass::text FROM pg_constraint"
        " WHERE conrelid = %s::regclass AND contype = 'f'",
        [PARENT],
    )
    for (referenced,) in cursor.fetchall():
        cursor.execute(f"LOCK TABLE {referenced} IN SHARE ROW EXCLUSIVE MODE")
    # The attach's lock on the parent: it lets reads and writes of the ledger go on (CREATE
    # TABLE ... PARTITION OF took ACCESS EXCLUSIVE, which queued every one of them behind
    # any long reader). ONLY: its partitions are not locked.
    cursor.execute(f"LOCK TABLE ONLY {PARENT} IN SHARE UPDATE EXCLUSIVE MODE")


def _month_create(cursor: Any, name: str, start: datetime, end: datetime) -> None:
    """A month's table, made as a table of its own and then attached, as ``CREATE TABLE ...
    PARTITION OF`` makes it (the same columns, defaults, checks, indexes, foreign key and
    event-id trigger: the attach adds the parent's indexes, key and trigger), without that
    statement's ACCESS EXCLUSIVE lock on the ledger. Rows of the month already in the default
    partition (a clock that ran ahead) are moved into it before the attach: the default
    partition may not keep rows of a month that has a partition. (Attached, its columns
    and checks are the ledger's alone, not its own, as a partition's always are: a check or
    column dropped from the ledger goes from it too.)"""
    bounds = f"FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
    within = f"occurred_at >= '{start.isoformat()}' AND occurred_at < '{end.isoformat()}'"
    # WARNING: no row may land in the default partition between the move and the attach (it
    # would be deleted uncopied, its id kept: lost for good): its lock first, which the attach
    # takes anyway. NOWAIT: every query of the ledger that does not name its months reads the
    # default partition, and would have queued behind this request while a long reader held
    # it; busy, the creation is tried again (``_month_add``).
    cursor.execute(f"LOCK TABLE {DEFAULT} IN ACCESS EXCLUSIVE MODE NOWAIT")
    # (A table of its own has no trigger until it is attached: the rows move as they are.)
    cursor.execute(f"CREATE TABLE {name} (LIKE {PARENT} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    cursor.execute(
        f"WITH moved AS (DELETE FROM {DEFAULT} WHERE {within} RETURNING *)"  # noqa: S608
        f" INSERT INTO {name} SELECT * FROM moved"
    )
    # The bounds as a check: the attach then knows every row is within them, without reading
    # them (dropped after: the partition's bounds say so from then on).
    cursor.execute(f'ALTER TABLE {name} ADD CONSTRAINT "{name}_bounds" CHECK ({within})')
    cursor.execute(f"ALTER TABLE {PARENT} ATTACH PARTITION {name} FOR VALUES {bounds}")
    cursor.execute(f'ALTER TABLE {name} DROP CONSTRAINT "{name}_bounds"')


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
