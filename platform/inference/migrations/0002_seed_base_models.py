from django.db import migrations

BASE_MODELS = [
    {
        "id": "minilm-l6",
        "base_model": "minilm-l6",
        "description": (
            "all-MiniLM-L6-v2 sentence encoder (mean-pooled, normalised). Zero-shot over "
            "request labels or few-shot over request examples."
        ),
    },
]


def seed(apps, schema_editor):
    AIModel = apps.get_model("inference", "AIModel")
    for spec in BASE_MODELS:
        AIModel.objects.update_or_create(
            id=spec["id"],
            defaults={
                "kind": "base",
                "base_model": spec["base_model"],
                "description": spec["description"],
                "status": "ready",
                "tenant": None,
            },
        )


class Migration(migrations.Migration):
    dependencies = [("inference", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
