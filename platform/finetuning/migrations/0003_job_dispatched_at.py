from django.db import migrations, models
from django.db.models import F


def mark_sent(apps, schema_editor):
    # Every queued or running job was sent to the training queue at its creation (or its
    # retry) before jobs waited for a slot: marked sent, none is sent a second time.
    job = apps.get_model("finetuning", "FineTuneJob")
    job.objects.filter(status__in=("queued", "running")).update(dispatched_at=F("created_at"))


class Migration(migrations.Migration):
    dependencies = [
        ("finetuning", "0002_job_plan"),
    ]

    operations = [
        migrations.AddField(
            model_name="finetunejob",
            name="dispatched_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunPython(mark_sent, migrations.RunPython.noop),
    ]
