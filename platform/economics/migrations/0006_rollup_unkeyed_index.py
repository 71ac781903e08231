"""The index that finds a tenant's unkeyed rollups (``metering.sums``), built CONCURRENTLY."""

from django.db import migrations, models

from core.online_migrations import AddIndexOnline


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("economics", "0005_rollup_grain_keyed")]

    operations = [
        AddIndexOnline(
            model_name="usagerollup",
            index=models.Index(
                condition=models.Q(api_key_id=""),
                fields=["tenant", "livemode", "day"],
                name="rollup_unkeyed",
            ),
        ),
    ]
