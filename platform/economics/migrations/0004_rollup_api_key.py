"""The API key joins the rollups' grain, so that ``/v1/usage?group_by=api_key`` reads whole
days from them (``metering.sums``). Cheap on a big table, on PostgreSQL:

- the column, with a constant default, is catalogue only (PostgreSQL 11+): existing rows
  read ``""``, "key unknown", until ``manage.py rebuild_rollups`` keys them;
- the wider unique index is built CONCURRENTLY, then swapped for the old constraint in one
  short transaction (``core.online_migrations.ReplaceUniqueOnline``);
- the index that finds unkeyed rows is built CONCURRENTLY too.

Reversed, a grain's rows of several keys are merged into one first (the narrower
constraint could not be made over them)."""

from django.db import migrations, models
from django.db.models import Count, Max, Min, Sum

from core.online_migrations import AddIndexOnline, ReplaceUniqueOnline

OLD_GRAIN = ("day", "tenant", "model", "kind", "livemode", "plan_id")
SUMMED = ("requests", "inputs", "cached", "tokens", "compute_ms", "cost_micros")


def _keys_merged(apps, schema_editor):
    """Each (day, tenant, model, kind, mode, plan)'s rows summed into its oldest, unkeyed."""
    rollup = apps.get_model("economics", "UsageRollup")
    grain = [name if name != "tenant" else "tenant_id" for name in OLD_GRAIN]
    split = rollup.objects.values(*grain).annotate(rows=Count("id")).filter(rows__gt=1)
    for group in split.iterator():
        rows = rollup.objects.filter(**{name: group[name] for name in grain})
        sums = rows.aggregate(**{name: Sum(name) for name in SUMMED}, last=Max("last_at"),
                              keep=Min("id"))  # fmt: skip
        rows.exclude(pk=sums["keep"]).delete()
        rows.filter(pk=sums["keep"]).update(
            api_key_id="", last_at=sums["last"], **{name: sums[name] for name in SUMMED}
        )


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("economics", "0003_rollup_last_at")]

    operations = [
        migrations.AddField(
            model_name="usagerollup",
            name="api_key_id",
            field=models.CharField(blank=True, db_default="", default="", max_length=32),
        ),
        ReplaceUniqueOnline(
            model_name="usagerollup",
            old=models.UniqueConstraint(fields=OLD_GRAIN, name="rollup_grain"),
            new=models.UniqueConstraint(fields=(*OLD_GRAIN, "api_key_id"), name="rollup_grain"),
        ),
        migrations.RunPython(migrations.RunPython.noop, _keys_merged, atomic=True),
        AddIndexOnline(
            model_name="usagerollup",
            index=models.Index(
                condition=models.Q(api_key_id=""),
                fields=["tenant", "livemode", "day"],
                name="rollup_unkeyed",
            ),
        ),
    ]
