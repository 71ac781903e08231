"""Schema operations that do not stop the product while they run on a large table."""

from __future__ import annotations

from typing import Any

from django.db import migrations


class AddIndexOnline(migrations.AddIndex):
    """``AddIndex``, built ``CONCURRENTLY`` on PostgreSQL: a plain ``CREATE INDEX`` locks the
    table against writes while it builds, and the ledger takes a write per answered call.
    The migration holding it must say ``atomic = False`` (PostgreSQL builds a concurrent
    index outside a transaction). Other databases build it as ``AddIndex`` does."""

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        model = to_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            schema_editor.add_index(model, self.index, **_online(schema_editor))

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        model = from_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            schema_editor.remove_index(model, self.index, **_online(schema_editor))


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
        model = to_state.apps.get_model(app_label, self.model_name)
        if not self.allow_migrate_model(schema_editor.connection.alias, model):
            return
        if schema_editor.connection.vendor != "postgresql":
            schema_editor.add_constraint(model, self.constraint)
            return
        table = schema_editor.quote_name(model._meta.db_table)
        check = self.constraint.constraint_sql(model, schema_editor)
        schema_editor.execute(f"ALTER TABLE {table} ADD {check} NOT VALID")
        name = schema_editor.quote_name(self.constraint.name)
        schema_editor.execute(f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}")


def _online(schema_editor: Any) -> dict[str, bool]:
    return {"concurrently": True} if schema_editor.connection.vendor == "postgresql" else {}
