"""The ledger partitioned by month on PostgreSQL (``metering.partitions`` says how): the table
as it was becomes the partition of every month up to this one's (no rows are copied), each
month after has a table of its own, and the event id's uniqueness moves to
``LedgerEventId``, which a trigger keeps. SQLite keeps one table with its unique constraint.

One way only: going back would need the months' rows copied into one table again."""

from datetime import UTC, datetime
from typing import Any

from django.db import migrations, models


def partition(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    from metering.partitions import is_partitioned, ledger_partition

    with schema_editor.connection.cursor() as cursor:
        if not is_partitioned(cursor):
            ledger_partition(cursor, now=datetime.now(UTC))


class Migration(migrations.Migration):
    dependencies = [("metering", "0005_usage_plan_index")]

    operations = [
        migrations.CreateModel(
            name="LedgerEventId",
            fields=[
                (
                    "event_id",
                    models.CharField(max_length=64, primary_key=True, serialize=False),
                ),
            ],
        ),
        migrations.RunPython(partition, elidable=False),
    ]
