"""The rollups' unique grain takes the API key (0004 says why): the wider index is built
CONCURRENTLY, then swapped for the old constraint in one short transaction
(``core.online_migrations.ReplaceUniqueOnline``; run again after a failure, it reuses a
valid index built before). Reversed, a grain's rows of several keys are merged into one
first (the narrower constraint could not be made over them)."""

from django.db import migrations, models
from django.db.models import Count, Max, Min, Sum

from core.online_migrations import ReplaceUniqueOnline

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

    dependencies = [("economics", "0004_rollup_api_key")]

    operations = [
        ReplaceUniqueOnline(
            model_name="usagerollup",
            old=models.UniqueConstraint(fields=OLD_GRAIN, name="rollup_grain"),
            new=models.UniqueConstraint(fields=(*OLD_GRAIN, "api_key_id"), name="rollup_grain"),
        ),
        migrations.RunPython(migrations.RunPython.noop, _keys_merged, atomic=True),
    ]
