"""Partial indexes on the few ledger rows the admin's list page filters for: correcting rows
(``?correction=yes``) and rows of a kind other than inference (``?kind__exact=fine_tune``),
on the id, so that a page of them newest first reads them alone (each filter read every row
of every month, twice: the page and its capped count). Built without stopping the ledger's
writes on PostgreSQL (``core.online_migrations.AddIndexOnline``: on the partitioned ledger,
the parent's index ``ON ONLY``, each month's built concurrently and attached); a month
created later gets its own with the others (``metering.partitions``)."""

from django.db import migrations, models

from core.online_migrations import AddIndexOnline


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("metering", "0008_ledger_correction_checks")]

    operations = [
        AddIndexOnline(
            model_name="usagerecord",
            index=models.Index(
                condition=models.Q(("corrects", ""), _negated=True),
                fields=["id"],
                name="usage_corrections",
            ),
        ),
        AddIndexOnline(
            model_name="usagerecord",
            index=models.Index(
                condition=models.Q(("kind", "inference"), _negated=True),
                fields=["id"],
                name="usage_not_inference",
            ),
        ),
    ]
