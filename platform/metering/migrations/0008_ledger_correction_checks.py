"""The checks that keep ordinary ledger rows' quantities non-negative and corrections'
non-positive (the columns are signed since 0007). Added without stopping the ledger's
writes on PostgreSQL (``core.online_migrations.AddCheckOnline``: NOT VALID, then validated,
each its own transaction); every existing row passes them (their ``corrects`` is blank and
their quantities were checked non-negative before)."""

from django.db import migrations, models

from core.online_migrations import AddCheckOnline


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("metering", "0007_ledger_corrections")]

    operations = [
        AddCheckOnline(
            model_name="usagerecord",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(("cached__gte", 0), ("inputs__gte", 0), ("tokens__gte", 0)),
                    models.Q(("corrects", ""), _negated=True),
                    _connector="OR",
                ),
                name="usage_counts_not_negative",
            ),
        ),
        AddCheckOnline(
            model_name="usagerecord",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    ("corrects", ""),
                    models.Q(("cached__lte", 0), ("inputs__lte", 0), ("tokens__lte", 0)),
                    _connector="OR",
                ),
                name="usage_corrections_not_positive",
            ),
        ),
    ]
