"""Ledger corrections (``metering.corrections``): a correcting row names the event it voids
(``corrects``), why (``reason``) and who (``corrected_by``), and holds its negated
quantities, so the quantity columns become signed. Ordinary rows keep their guard as a check
constraint (never negative unless a correction; a correction never positive), added by 0008.

On PostgreSQL the ledger is partitioned (migration 0006): columns added to and constraints
dropped from or added to the parent reach every partition. The PositiveIntegerField checks
go with the parent's (``AlterField``); a partition that still held one as its own (a month
table made outside the parent and attached: ``partitions._month_create``) has it dropped by
``leftover_checks_drop``. Existing rows stay where they are, unchanged: the new columns are
blank on them, by a default kept in the database, so that the release before (still
inserting rows without them during a rolling deploy) goes on writing the ledger. Every step here changes the catalog only (no row is read or rewritten)."""

from typing import Any

from django.db import migrations, models

# The checks the PositiveIntegerFields had, as PostgreSQL shows them.
OLD_CHECKS = frozenset(f"CHECK (({name} >= 0))" for name in ("inputs", "tokens", "cached"))


def leftover_checks_drop(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    from metering.partitions import PARENT

    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid)"
            " FROM pg_constraint c WHERE c.contype = 'c' AND c.conislocal"
            " AND c.conrelid IN (SELECT relid FROM pg_partition_tree(%s::regclass))",
            [PARENT],
        )
        for table, name, definition in cursor.fetchall():
            if definition in OLD_CHECKS:
                cursor.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')


class Migration(migrations.Migration):
    dependencies = [("metering", "0006_ledger_partitioned")]

    operations = [
        migrations.AlterModelOptions(
            name="usagerecord",
            options={
                "permissions": [
                    ("void_usagerecord", "Can void a usage record (append a correcting row)")
                ]
            },
        ),
        migrations.AddField(
            model_name="usagerecord",
            name="corrected_by",
            field=models.CharField(blank=True, db_default="", default="", max_length=150),
        ),
        migrations.AddField(
            model_name="usagerecord",
            name="corrects",
            field=models.CharField(blank=True, db_default="", default="", max_length=64),
        ),
        migrations.AddField(
            model_name="usagerecord",
            name="reason",
            field=models.TextField(blank=True, db_default="", default=""),
        ),
        migrations.AlterField(
            model_name="usagerecord",
            name="cached",
            field=models.IntegerField(default=0),
        ),
        migrations.AlterField(
            model_name="usagerecord",
            name="inputs",
            field=models.IntegerField(),
        ),
        migrations.AlterField(
            model_name="usagerecord",
            name="tokens",
            field=models.BigIntegerField(),
        ),
        migrations.RunPython(leftover_checks_drop, migrations.RunPython.noop, elidable=False),
    ]
