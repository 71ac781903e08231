from django.db import migrations

from inference.catalog import base_models_seed


def seed(apps, schema_editor):
    # The catalogue gained minilm-l6-int8; databases migrated earlier get it too.
    base_models_seed(apps.get_model("inference", "AIModel"))


class Migration(migrations.Migration):
    dependencies = [("inference", "0003_aimodel_artifact")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
