from django.db import migrations

from inference.catalog import base_models_seed


def seed(apps, schema_editor):
    base_models_seed(apps.get_model("inference", "AIModel"))


class Migration(migrations.Migration):
    dependencies = [("inference", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
