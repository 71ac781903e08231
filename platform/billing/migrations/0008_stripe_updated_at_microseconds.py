"""``stripe_updated_at`` of subscriptions and invoices in unix microseconds, not seconds
(``billing.stripe_client.stripe_moment``): a stored second becomes the last microsecond of
it, so that no read begun within that second (stamped in microseconds from now on) is taken
for newer than it, as none begun after it is taken for older. A value already past
10**14 (year 5138 in seconds) is microseconds already: left alone, so a second run changes
nothing."""

from django.db import migrations
from django.db.models import F

MICROSECONDS_FROM = 10**14  # (as billing.stripe_client has it: a migration keeps its own)


def to_microseconds(apps, schema_editor):
    for name in ("Subscription", "Invoice"):
        model = apps.get_model("billing", name)
        model.objects.filter(stripe_updated_at__gt=0, stripe_updated_at__lt=MICROSECONDS_FROM).update(
            stripe_updated_at=F("stripe_updated_at") * 1_000_000 + 999_999
        )


def to_seconds(apps, schema_editor):
    for name in ("Subscription", "Invoice"):
        model = apps.get_model("billing", name)
        model.objects.filter(stripe_updated_at__gte=MICROSECONDS_FROM).update(
            stripe_updated_at=F("stripe_updated_at") / 1_000_000
        )


class Migration(migrations.Migration):
    dependencies = [("billing", "0007_plan_spans_from_deploy")]

    operations = [migrations.RunPython(to_microseconds, to_seconds, elidable=False)]
