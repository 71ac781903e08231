"""The API key joins the rollups' grain, so that ``/v1/usage?group_by=api_key`` reads whole
days from them (``metering.sums``); this migration adds the column, 0005 widens the unique
grain and 0006 indexes the unkeyed rows, each on its own so that a failure leaves a state
the next run of ``migrate`` starts from (0005 and 0006 build online, outside a transaction).

The column, with a constant default, is catalogue only on PostgreSQL 11+: existing rows
read ``""``, "key unknown". Its ACCESS EXCLUSIVE lock is held for an instant, but a wait for
it behind a long reader would queue every query of the table: it waits 5 s at most (the
migration fails, rolled back whole, and can be run again).

On a database that holds rollups, rows are written unkeyed from here on
(``RollupsUnkeyed``), until ``manage.py rebuild_rollups``, run once the release before has
stopped, keys them all: that release's usage consumer, still running through the rollout,
adds a call to every row of its six-column grain, so a grain keeps one row until then."""

from django.db import migrations, models


def _lock_wait_bounded(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("SET LOCAL lock_timeout = '5s'")


def _unkeyed_while_the_release_before_runs(apps, schema_editor):
    if apps.get_model("economics", "UsageRollup").objects.exists():
        apps.get_model("economics", "RollupsUnkeyed").objects.get_or_create(id=1)


class Migration(migrations.Migration):
    dependencies = [("economics", "0003_rollup_last_at")]

    operations = [
        migrations.RunPython(_lock_wait_bounded, migrations.RunPython.noop),
        migrations.AddField(
            model_name="usagerollup",
            name="api_key_id",
            field=models.CharField(blank=True, db_default="", default="", max_length=32),
        ),
        migrations.CreateModel(
            name="RollupsUnkeyed",
            fields=[
                ("id", models.PositiveSmallIntegerField(default=1, primary_key=True,
                                                        serialize=False)),  # fmt: skip
                ("since", models.DateTimeField(auto_now_add=True)),
            ],
        ),
        migrations.RunPython(_unkeyed_while_the_release_before_runs, migrations.RunPython.noop),
    ]
