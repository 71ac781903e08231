from typing import Any

from django.core.management.base import BaseCommand

from inference.catalog import BASE_MODELS, base_models_seed
from inference.models import AIModel
from plans.catalog import CATALOGUE, plans_seed
from plans.models import Plan


class Command(BaseCommand):
    help = "Create or refresh the base models, and create missing catalogue plans (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        base_models_seed(AIModel)
        plans_seed(Plan)  # only plans that do not exist: operators' edits are kept
        self.stdout.write(f"seeded base models: {', '.join(m['id'] for m in BASE_MODELS)}")
        self.stdout.write(f"catalogue plans present: {', '.join(p['slug'] for p in CATALOGUE)}")
