"""Schema operations that do not stop the product while they run on a large table."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from django.db import DatabaseError, migrations, transaction
from django.db.migrations.operations.base import Operation

# ``locked_briefly``: each lock is waited for this long at most, in each of this many tries,
# LOCK_RETRY_S x the try's number apart.
LOCK_TIMEOUT_MS = 1000
LOCK_TRIES = 5
LOCK_RETRY_S = 1.0
LOCK_NOT_AVAILABLE = "55P03"  # (SQLSTATE of a lock_timeout)


class AddIndexOnline(migrations.AddIndex):
    """``AddIndex``, built ``CONCURRENTLY`` on PostgreSQL: a plain ``CREATE INDEX`` locks the
    table against writes while it builds, and the ledger takes a write per answered call.
    The migration holding it must say ``atomic = False`` (PostgreSQL builds a concurrent
    index outside a transaction). Other databases build it as ``AddIndex`` does.

    A partitioned table (the ledger on PostgreSQL) cannot be indexed ``CONCURRENTLY`` as a
    whole: its index is made on the parent alone (``ON ONLY``: invalid, empty, no lock held
    while building), each partition's built concurrently and attached to it; the parent's
    is valid once every partition's is attached, and from then on a partition created or
    attached later gets one of its own (``metering.partitions``). Run again after a failure,
    it builds only the partitions' indexes that are missing (a failed concurrent build leaves
    an invalid index behind: dropped first)."""

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        model = _migrated(self, app_label, schema_editor, to_state)
        if model is None:
            return
        index_add_online(schema_editor, model, self.index)

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        model = _migrated(self, app_label, schema_editor, from_state)
        if model is None:
            return
        if _partitions(schema_editor, model._meta.db_table) is None:
            schema_editor.remove_index(model, self.index, **_online(schema_editor))
        else:
            _partitioned_index_drop(schema_editor, model, self.index)


class AddCheckOnline(migrations.AddConstraint):
    """``AddConstraint`` for a check constraint, on PostgreSQL added ``NOT VALID`` and then
    validated: a plain ``ADD CONSTRAINT ... CHECK`` reads every row under the table's ACCESS
    EXCLUSIVE lock (no write and no read of the ledger meanwhile), ``VALIDATE CONSTRAINT``
    reads them under SHARE UPDATE EXCLUSIVE, which lets writes and reads go on (a partitioned
    table: each partition in turn). New rows are checked from the first statement on. The
    migration holding it must say ``atomic = False`` (in one transaction the first lock is
    held to its end anyway). Other databases add it as ``AddConstraint`` does."""

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        model = _migrated(self, app_label, schema_editor, to_state)
        if model is None:
            return
        if schema_editor.connection.vendor != "postgresql":
            schema_editor.add_constraint(model, self.constraint)
            return
        table = schema_editor.quote_name(model._meta.db_table)
        check = self.constraint.constraint_sql(model, schema_editor)
        schema_editor.execute(f"ALTER TABLE {table} ADD {check} NOT VALID")
        name = schema_editor.quote_name(self.constraint.name)
        schema_editor.execute(f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}")


class ReplaceUniqueOnline(Operation):
    """Replace the unique constraint ``old`` of a model with ``new`` (which may bear its
    name). On PostgreSQL a ``DROP CONSTRAINT`` and ``ADD CONSTRAINT ... UNIQUE`` builds the
    new index under the table's ACCESS EXCLUSIVE lock (no write and no read meanwhile):
    here it is built ``CONCURRENTLY`` under a name of its own while writes go on, and then,
    in one short transaction, the old constraint is dropped and the new one made from the
    built index (``USING INDEX``: renamed to the constraint's name, nothing read), waiting
    10 s at most for the table's lock rather than queue every query behind a long reader.
    Run again after a failure, it reuses a valid index built before and drops an invalid
    one. The migration holding it must say ``atomic = False``. Other databases replace the
    constraint as ``RemoveConstraint`` and ``AddConstraint`` do."""

    def __init__(self, model_name: str, old: Any, new: Any) -> None:
        self.model_name, self.old, self.new = model_name, old, new

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        kwargs = {"model_name": self.model_name, "old": self.old, "new": self.new}
        return self.__class__.__name__, [], kwargs

    def describe(self) -> str:
        return f"Replace unique constraint {self.old.name} on {self.model_name} online"

    @property
    def migration_name_fragment(self) -> str:
        return f"{self.model_name.lower()}_{self.new.name.lower()}"

    def state_forwards(self, app_label: str, state: Any) -> None:
        state.remove_constraint(app_label, self.model_name.lower(), self.old.name)
        state.add_constraint(app_label, self.model_name.lower(), self.new)

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        self._replace(app_label, schema_editor, from_state, to_state, self.old, self.new)

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        self._replace(app_label, schema_editor, from_state, to_state, self.new, self.old)

    def _replace(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any, old: Any,
        new: Any,
    ) -> None:  # fmt: skip
        model = _migrated(self, app_label, schema_editor, to_state)
        if model is None:
            return
        if schema_editor.connection.vendor != "postgresql":
            schema_editor.remove_constraint(
                from_state.apps.get_model(app_label, self.model_name), old
            )
            schema_editor.add_constraint(model, new)
            return
        quote, table = schema_editor.quote_name, schema_editor.quote_name(model._meta.db_table)
        built = f"{new.name}_online"[:63]
        with schema_editor.connection.cursor() as cursor:
            cursor.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)",
                           [built])  # fmt: skip
            found = cursor.fetchone()
        if found is None or not found[0]:
            schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {quote(built)}")
            columns = ", ".join(quote(model._meta.get_field(name).column) for name in new.fields)
            schema_editor.execute(
                f"CREATE UNIQUE INDEX CONCURRENTLY {quote(built)} ON {table} ({columns})"
            )
        with transaction.atomic(using=schema_editor.connection.alias):
            schema_editor.execute("SET LOCAL lock_timeout = '10s'")
            schema_editor.execute(f"ALTER TABLE {table} DROP CONSTRAINT {quote(old.name)}")
            schema_editor.execute(
                f"ALTER TABLE {table} ADD CONSTRAINT {quote(new.name)} UNIQUE USING INDEX "
                f"{quote(built)}"
            )


def index_add_online(schema_editor: Any, model: Any, index: Any) -> None:
    """``index`` built on ``model``'s table as ``AddIndexOnline`` builds it."""
    if _partitions(schema_editor, model._meta.db_table) is None:
        schema_editor.add_index(model, index, **_online(schema_editor))
    else:
        _partitioned_index_add(schema_editor, model, index)


def locked_briefly(schema_editor: Any, statements: list[str]) -> None:
    """``statements`` in one transaction of their own (the migration must say ``atomic =
    False``) that waits ``LOCK_TIMEOUT_MS`` at most for each lock, tried ``LOCK_TRIES`` times:
    for statements that take a table's ACCESS EXCLUSIVE lock only for an instant, such as
    dropping an index of the partitioned ledger (which cannot be dropped CONCURRENTLY). The
    lock waits behind a long reader, and every query of the table queues behind the wait:
    for a second, not for as long as the reader reads. PostgreSQL only."""
    for attempt in range(1, LOCK_TRIES + 1):
        try:
            with transaction.atomic(using=schema_editor.connection.alias):
                schema_editor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_MS}ms'")
                for statement in statements:
                    schema_editor.execute(statement)
            return
        except DatabaseError as exc:
            busy = getattr(exc.__cause__, "sqlstate", None) == LOCK_NOT_AVAILABLE
            if not busy or attempt == LOCK_TRIES:
                raise
            time.sleep(LOCK_RETRY_S * attempt)


def _own_name(partition: str, name: str) -> str:
    """The name of ``partition``'s index attached to the parent's index ``name``: the two
    joined, or, past PostgreSQL's 63 characters, cut and told apart by a hash (cut alone,
    ``..._tenant_id_c08f87b4`` and ``..._tenant_id_c08f87b4_like`` were one name)."""
    own = f"{partition}_{name}"
    if len(own) <= 63:
        return own
    return f"{own[:54]}_{hashlib.sha256(own.encode()).hexdigest()[:8]}"


def _migrated(operation: Any, app_label: str, schema_editor: Any, state: Any) -> Any:
    """The operation's model in ``state``, or None where this database does not migrate it."""
    model = state.apps.get_model(app_label, operation.model_name)
    return model if operation.allow_migrate_model(schema_editor.connection.alias, model) else None


def _partitions(schema_editor: Any, table: str) -> list[str] | None:
    """The partitions of ``table`` where it is a partitioned table on PostgreSQL, else None."""
    if schema_editor.connection.vendor != "postgresql":
        return None
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_partitioned_table WHERE partrelid = %s::regclass", [table])
        if cursor.fetchone() is None:
            return None
        cursor.execute(
            "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = %s::regclass"
            " ORDER BY 1",
            [table],
        )
        return [name for (name,) in cursor.fetchall()]


def _partitioned_index_add(schema_editor: Any, model: Any, index: Any) -> None:
    table, name = model._meta.db_table, index.name
    quote = schema_editor.quote_name
    parent = index.create_sql(model, schema_editor)
    parent.parts["name"] = f"IF NOT EXISTS {quote(name)}"
    parent.parts["table"] = f"ONLY {quote(table)}"
    schema_editor.execute(parent)
    # NOTE: the partitions before those with the index: a month attached between the two
    # reads (the beat's) gets the index on attaching, and is then in neither list; read the
    # other way round, it was in the first alone, and a second index built for it could not
    # be attached (it has one), left behind on it, written on every insert.
    partitions = _partitions(schema_editor, table) or []
    with schema_editor.connection.cursor() as cursor:
        # The partitions whose index is attached already (a run before this one, or a month
        # created meanwhile: it got its own index on attaching).
        cursor.execute(
            "SELECT i.indrelid::regclass::text FROM pg_inherits h"
            " JOIN pg_index i ON i.indexrelid = h.inhrelid WHERE h.inhparent = %s::regclass",
            [name],
        )
        done = {partition for (partition,) in cursor.fetchall()}
    for partition in partitions:
        if partition in done:
            continue
        own = _own_name(partition, name)
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {quote(own)}")
        statement = index.create_sql(model, schema_editor, concurrently=True)
        statement.parts["name"] = quote(own)
        statement.parts["table"] = quote(partition)
        schema_editor.execute(statement)
        schema_editor.execute(f"ALTER INDEX {quote(name)} ATTACH PARTITION {quote(own)}")
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = %s::regclass", [name])
        if not cursor.fetchone()[0]:  # a partition attached meanwhile without it: run again
            raise RuntimeError(f"index {name} is not valid on every partition yet: migrate again")


def _partitioned_index_drop(schema_editor: Any, model: Any, index: Any) -> None:
    """The parent's index, its partitions' with it (a partitioned index cannot be dropped
    CONCURRENTLY), and any partition's index a failed forward run built but never attached
    (``_partitioned_index_add``'s names), concurrently. The drop locks every partition: it
    waits 10 s at most for a long reader rather than queue the ledger's queries behind it."""
    quote, name = schema_editor.quote_name, index.name
    for partition in _partitions(schema_editor, model._meta.db_table) or []:
        own = _own_name(partition, name)
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(
                "SELECT to_regclass(%s) IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_inherits"
                " WHERE inhrelid = to_regclass(%s))",
                [own, own],
            )
            stray = cursor.fetchone()[0]
        if stray:
            schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {quote(own)}")
    schema_editor.execute("SET lock_timeout = '10s'")
    try:
        schema_editor.execute(f"DROP INDEX IF EXISTS {quote(name)}")
    finally:
        schema_editor.execute("RESET lock_timeout")


def _online(schema_editor: Any) -> dict[str, bool]:
    return {"concurrently": True} if schema_editor.connection.vendor == "postgresql" else {}
