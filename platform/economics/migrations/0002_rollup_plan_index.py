"""An index on the rollups' plan version, for the same question as metering 0005 asks of
the ledger. Built CONCURRENTLY on PostgreSQL (core.online_migrations)."""

from django.db import migrations, models

from core.online_migrations import AddIndexOnline


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("economics", "0001_initial")]

    operations = [
        AddIndexOnline(
            model_name="usagerollup", index=models.Index(fields=["plan_id"], name="rollup_plan")
        ),
    ]
