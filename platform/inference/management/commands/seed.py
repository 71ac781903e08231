from typing import Any

from django.core.management.base import BaseCommand

from inference.catalog import BASE_MODELS, base_models_seed
from inference.models import AIModel


class Command(BaseCommand):
    help = "Create or refresh the base models in the registry (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        base_models_seed(AIModel)
        self.stdout.write(f"seeded base models: {', '.join(m['id'] for m in BASE_MODELS)}")
