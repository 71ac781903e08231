from __future__ import annotations

from typing import Any

import stripe
from django.core.management.base import BaseCommand, CommandError

from billing.stripe_client import stripe_configured
from billing.stripe_sync import StripePlanMismatch, plans_sync_to_stripe


class Command(BaseCommand):
    help = "Create (or find) the Stripe product and monthly plan of every paid plan version."

    def handle(self, *args: Any, **options: Any) -> None:
        if not stripe_configured():
            raise CommandError("STRIPE_API_KEY is not set.")
        try:
            synced = plans_sync_to_stripe()
        except StripePlanMismatch as exc:
            raise CommandError(str(exc)) from exc
        except stripe.StripeError as exc:
            # (Plans synced before it keep their ids: running it again goes on from there.)
            raise CommandError(f"Stripe: {exc.user_message or exc}") from exc
        for plan in synced:
            self.stdout.write(f"{plan.id}: {plan.stripe_product_id} / {plan.stripe_plan_id}")
