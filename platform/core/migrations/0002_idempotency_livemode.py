"""Idempotency records carry the key's mode; a key is unique per tenant *and mode*.

Records written before this are taken as live (the column's default): they expire within a
day (IDEMPOTENCY_TTL_S).

NOTE: on PostgreSQL the new unique index is built CONCURRENTLY and then attached as the
constraint: the table holds a day of records (millions at scale), and a plain ADD
CONSTRAINT would block every keyed POST while it builds. Hence ``atomic = False``."""

from django.db import migrations, models

OLD = models.UniqueConstraint(fields=["tenant", "key"], name="idempotency_tenant_key")
NEW = models.UniqueConstraint(
    fields=["tenant", "livemode", "key"], name="idempotency_tenant_mode_key"
)


def _swap(apps, schema_editor, *, drop, add, add_columns):
    model = apps.get_model("core", "IdempotencyRecord")
    if schema_editor.connection.vendor != "postgresql":
        # NOTE: SQLite rebuilds the table from the model's constraints: give this
        # throwaway historical model the ones it is to have, as the state operations do.
        meta = model._meta
        meta.constraints = [c for c in meta.constraints if c.name not in (drop.name, add.name)]
        schema_editor.remove_constraint(model, drop)
        meta.constraints = [*meta.constraints, add]
        schema_editor.add_constraint(model, add)
        return
    table = schema_editor.quote_name(model._meta.db_table)
    name = schema_editor.quote_name(add.name)
    columns = ", ".join(schema_editor.quote_name(column) for column in add_columns)
    schema_editor.execute(f"CREATE UNIQUE INDEX CONCURRENTLY {name} ON {table} ({columns})")
    schema_editor.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} UNIQUE USING INDEX {name}")
    schema_editor.execute(f"ALTER TABLE {table} DROP CONSTRAINT {schema_editor.quote_name(drop.name)}")


def forwards(apps, schema_editor):
    _swap(apps, schema_editor, drop=OLD, add=NEW, add_columns=["tenant_id", "livemode", "key"])


def backwards(apps, schema_editor):
    _swap(apps, schema_editor, drop=NEW, add=OLD, add_columns=["tenant_id", "key"])


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("core", "0001_initial"),
        ("tenants", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="idempotencyrecord",
            name="livemode",
            field=models.BooleanField(db_default=True, default=True),
        ),
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(forwards, backwards)],
            state_operations=[
                migrations.RemoveConstraint(model_name="idempotencyrecord", name=OLD.name),
                migrations.AddConstraint(model_name="idempotencyrecord", constraint=NEW),
            ],
        ),
    ]
