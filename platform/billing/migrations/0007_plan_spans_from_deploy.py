"""Every subscription's plan as of this deploy, as a span from now: a period in progress
has no span at or before its start, so it stays priced as it was (every plan's included
inputs whole); periods from the next one on are shared by the time on each plan."""

from django.db import migrations
from django.utils import timezone


def spans_from_now(apps, schema_editor):
    subscription = apps.get_model("billing", "Subscription")
    span = apps.get_model("billing", "PlanSpan")
    now = timezone.now()
    have = set(span.objects.values_list("tenant_id", flat=True))
    span.objects.bulk_create(
        [
            span(tenant_id=tenant_id, plan_id=plan_id, start=now)
            for tenant_id, plan_id in subscription.objects.values_list("tenant_id", "plan_id")
            if tenant_id not in have
        ],
        batch_size=1000,
    )


class Migration(migrations.Migration):
    dependencies = [("billing", "0006_period_scheduled_end")]

    operations = [migrations.RunPython(spans_from_now, migrations.RunPython.noop)]
