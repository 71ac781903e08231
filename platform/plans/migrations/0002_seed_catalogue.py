from django.db import migrations

from plans.catalog import plans_seed


def seed(apps, schema_editor):
    plans_seed(apps.get_model("plans", "Plan"))


class Migration(migrations.Migration):
    dependencies = [("plans", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
