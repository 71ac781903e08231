"""The ledger's indexes that no query needs, each written on every insert, dropped: the
tenant's own index (``usage_tenant_time`` leads with the tenant: it serves every lookup by
tenant, the foreign key's checks included) and, on PostgreSQL, the ``varchar_pattern_ops``
twins Django adds to an indexed CharField for ``LIKE 'prefix%'`` (the tenant's, the API
key's, the event id's, and the event ids table's), which nothing runs: the admin's search
matches whole ids. The API key's plain index stays, renamed ``usage_api_key`` (the model
names it in ``Meta.indexes`` rather than ``db_index=True``, which would add the twin back).
The event id keeps its plain index and, on SQLite, its unique constraint.

On PostgreSQL an index of the partitioned ledger cannot be dropped CONCURRENTLY: the drops
and the rename take the ledger's ACCESS EXCLUSIVE lock for an instant, in one transaction
that waits a second at most for it (``core.online_migrations.locked_briefly``, retried).
Going back builds the dropped indexes again without stopping writes (``index_add_online``).
A month created later gets the parent's indexes when attached: the same set."""

from typing import Any

import django.db.models.deletion
from django.db import migrations, models

from core.online_migrations import index_add_online, locked_briefly

LEDGER = "metering_usagerecord"
EVENT_IDS = "metering_ledgereventid"
PATTERN_OPS = ["varchar_pattern_ops"]


def _names(schema_editor: Any) -> dict[str, str]:
    """Django's names for the indexes it made (``metering_usagerecord_tenant_id_c08f87b4``...)"""
    name = schema_editor._create_index_name
    return {
        "tenant": name(LEDGER, ["tenant_id"], suffix=""),
        "tenant_like": name(LEDGER, ["tenant_id"], suffix="_like"),
        "api_key": name(LEDGER, ["api_key_id"], suffix=""),
        "api_key_like": name(LEDGER, ["api_key_id"], suffix="_like"),
        "event_id_like": name(LEDGER, ["event_id"], suffix="_like"),
        "event_ids_like": name(EVENT_IDS, ["event_id"], suffix="_like"),
    }


def _dropped(names: dict[str, str], postgresql: bool) -> list[models.Index]:
    """The ledger's indexes this migration drops (the API key's is renamed, not dropped, on
    PostgreSQL; SQLite cannot rename an index)."""
    indexes = [models.Index(fields=["tenant"], name=names["tenant"])]
    if not postgresql:
        return [*indexes, models.Index(fields=["api_key_id"], name=names["api_key"])]
    return [
        *indexes,
        models.Index(fields=["tenant"], name=names["tenant_like"], opclasses=PATTERN_OPS),
        models.Index(fields=["api_key_id"], name=names["api_key_like"], opclasses=PATTERN_OPS),
        models.Index(fields=["event_id"], name=names["event_id_like"], opclasses=PATTERN_OPS),
    ]


API_KEY = models.Index(fields=["api_key_id"], name="usage_api_key")


def forwards(apps: Any, schema_editor: Any) -> None:
    names, quote = _names(schema_editor), schema_editor.quote_name
    postgresql = schema_editor.connection.vendor == "postgresql"
    if not postgresql:  # SQLite: one DROP INDEX a statement
        for index in _dropped(names, postgresql):
            schema_editor.execute(f"DROP INDEX IF EXISTS {quote(index.name)}")
        schema_editor.execute(API_KEY.create_sql(apps.get_model("metering", "UsageRecord"),
                                                 schema_editor))  # fmt: skip
        return
    dropped = ", ".join(quote(index.name) for index in _dropped(names, postgresql))
    locked_briefly(schema_editor, [
        f"DROP INDEX IF EXISTS {dropped}",
        f"ALTER INDEX IF EXISTS {quote(names['api_key'])} RENAME TO {quote(API_KEY.name)}",
    ])  # fmt: skip
    schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {quote(names['event_ids_like'])}")


def backwards(apps: Any, schema_editor: Any) -> None:
    names, quote = _names(schema_editor), schema_editor.quote_name
    postgresql = schema_editor.connection.vendor == "postgresql"
    ledger = apps.get_model("metering", "UsageRecord")
    if not postgresql:
        schema_editor.execute(f"DROP INDEX IF EXISTS {quote(API_KEY.name)}")
        for index in _dropped(names, postgresql):
            schema_editor.execute(index.create_sql(ledger, schema_editor))
        return
    locked_briefly(schema_editor, [
        f"ALTER INDEX IF EXISTS {quote(API_KEY.name)} RENAME TO {quote(names['api_key'])}",
    ])  # fmt: skip
    for index in _dropped(names, postgresql):
        index_add_online(schema_editor, ledger, index)
    # (a concurrent build that failed leaves an invalid index behind: dropped first)
    schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {quote(names['event_ids_like'])}")
    event_ids = models.Index(fields=["event_id"], name=names["event_ids_like"],
                             opclasses=PATTERN_OPS)  # fmt: skip
    index_add_online(schema_editor, apps.get_model("metering", "LedgerEventId"), event_ids)


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("metering", "0009_ledger_admin_indexes"),
        ("tenants", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="usagerecord",
                    name="api_key_id",
                    field=models.CharField(max_length=32),
                ),
                migrations.AlterField(
                    model_name="usagerecord",
                    name="tenant",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="tenants.tenant",
                    ),
                ),
                migrations.AddIndex(model_name="usagerecord", index=API_KEY),
            ],
            database_operations=[migrations.RunPython(forwards, backwards, elidable=False)],
        ),
    ]
