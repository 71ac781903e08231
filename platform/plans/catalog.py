"""The catalogue every deployment starts with; operators change it in the admin (which
creates new versions). Seeded by a data migration and ``manage.py seed`` (idempotent: an
existing plan is left as the operator made it)."""

from __future__ import annotations

from typing import Any

CATALOGUE: list[dict[str, Any]] = [
    {
        "slug": "free",
        "name": "Free",
        "base_fee": 0,
        # Generous on requests (a free tier that developers can build and test against),
        # bounded on cost by the hard cap on inputs.
        "included_inputs": 10_000,
        "overage_tiers": {},
        "monthly_hard_cap": 10_000,
        "rate_limit_per_minute": 600,
        "concurrency_cap": 8,
        "fine_tuning": False,
        "max_fine_tuned_models": 0,
        "lora": False,
        "finetune_unit_amount": "0",
    },
    {
        "slug": "pro",
        "name": "Pro",
        "base_fee": 4_900,
        "included_inputs": 100_000,
        "overage_tiers": {
            "standard": [
                {"up_to": 1_000_000, "unit_amount": "40"},
                {"up_to": None, "unit_amount": "25"},
            ],
            "int8": [
                {"up_to": 1_000_000, "unit_amount": "24"},
                {"up_to": None, "unit_amount": "15"},
            ],
        },
        "monthly_hard_cap": None,
        "rate_limit_per_minute": 3_000,
        "concurrency_cap": 16,
        "fine_tuning": True,
        "max_fine_tuned_models": 10,
        "lora": True,
        "finetune_unit_amount": "0.5",
    },
    {
        "slug": "scale",
        "name": "Scale",
        "base_fee": 49_900,
        "included_inputs": 2_000_000,
        "overage_tiers": {
            "standard": [
                {"up_to": 10_000_000, "unit_amount": "20"},
                {"up_to": None, "unit_amount": "12"},
            ],
            "int8": [
                {"up_to": 10_000_000, "unit_amount": "12"},
                {"up_to": None, "unit_amount": "8"},
            ],
        },
        "monthly_hard_cap": None,
        "rate_limit_per_minute": 30_000,
        "concurrency_cap": 64,
        "fine_tuning": True,
        "max_fine_tuned_models": 100,
        "lora": True,
        "finetune_unit_amount": "0.3",
    },
]


def plans_seed(model_class: Any) -> None:
    for spec in CATALOGUE:
        if not model_class.objects.filter(slug=spec["slug"]).exists():
            model_class.objects.create(id=f"{spec['slug']}@1", version=1, is_current=True, **spec)
