"""An index on the plan version each ledger row was made on: the plans admin asks whether
any usage refers to a version (its terms and id are then kept for good), which was a scan
of the whole ledger. Built CONCURRENTLY on PostgreSQL (core.online_migrations)."""

from django.db import migrations, models

from core.online_migrations import AddIndexOnline


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("metering", "0004_usagerecord_plan_id")]

    operations = [
        AddIndexOnline(
            model_name="usagerecord", index=models.Index(fields=["plan_id"], name="usage_plan")
        ),
    ]
