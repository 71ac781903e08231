"""The plan catalogue. A plan is versioned: a version that subscribers signed is never
edited in place; an operator's change creates the next version, and existing subscribers
keep theirs until they are moved."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models

from .terms import (
    MODEL_TIERS,
    MONEY_TERMS,
    price_terms_check,
    unbilled_charges_check,
    uncapped_overage_check,
)

__all__ = ["MODEL_TIERS", "Plan"]

# The price terms plans/terms.py checks (what the rating engine can price).
CHECKED_TERMS = ("base_fee", "included_inputs", "overage_tiers", "finetune_unit_amount",
                 "cached_results_billed", "currency")  # fmt: skip


class Plan(models.Model):
    id = models.CharField(primary_key=True, max_length=64, editable=False)  # "pro@2"
    slug = models.SlugField(max_length=40)  # "pro": what customers ask for
    version = models.PositiveIntegerField(default=1)
    is_current = models.BooleanField(default=True, help_text="The version new subscribers get.")
    public = models.BooleanField(default=True, help_text="Listed in GET /v1/plans.")
    name = models.CharField(max_length=100)
    currency = models.CharField(max_length=3, default="usd")
    # Money is integer minor units, or Decimal minor units where a unit price can be
    # fractional (a price per 1,000 inputs of 0.5 cents is "0.5").
    base_fee = models.PositiveIntegerField(default=0, help_text="Per month, minor units.")
    included_inputs = models.PositiveBigIntegerField(default=0)
    # {"standard": [{"up_to": 1000000, "unit_amount": "40"}, {"up_to": null, ...}], "int8": [...]}
    # Graduated: each tier's unit_amount (minor units per 1,000 inputs) applies to the inputs
    # that fall inside it; the last tier has "up_to": null.
    overage_tiers = models.JSONField(default=dict, blank=True)  # {}: no overage (capped plans)
    finetune_unit_amount = models.DecimalField(
        max_digits=12,
        decimal_places=4,
        default=0,
        help_text="Minor units per 1,000 trained tokens.",
    )
    rate_limit_per_minute = models.PositiveIntegerField(default=60)
    key_rate_limit_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Per API key; empty = the plan's limit."
    )
    concurrency_cap = models.PositiveIntegerField(default=4)
    # (0 was taken, and refused every call of the plan's tenants as past the cap.)
    monthly_hard_cap = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1, "At least 1 input: leave it empty for no cap.")],
        help_text="Inputs per period; empty = no cap.",
    )
    fine_tuning = models.BooleanField(default=False)
    max_fine_tuned_models = models.PositiveIntegerField(default=0)
    lora = models.BooleanField(default=False)
    cached_results_billed = models.BooleanField(default=True)
    stripe_product_id = models.CharField(max_length=100, blank=True, default="")
    stripe_plan_id = models.CharField(max_length=100, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["slug", "version"], name="plan_slug_version"),
            models.UniqueConstraint(
                fields=["slug"], condition=models.Q(is_current=True), name="plan_one_current"
            ),
        ]
        ordering = ["base_fee", "slug", "-version"]

    def __str__(self) -> str:
        return f"{self.name} (v{self.version})"

    def clean_fields(self, exclude: Collection[str] | None = None) -> None:
        """The fields, and price terms the rating engine can price (plans/terms.py); the
        admin calls it. NOTE: a term in ``exclude`` (read-only in the admin, as an old
        version's terms are) is not checked: it cannot change here, and one stored before a
        check that refuses it now must not stop an operator from renaming the version (nor
        raise: a form cannot show an error on a field it lacks)."""
        skipped = set(exclude or ())
        errors: dict[str, Any] = {}
        try:
            super().clean_fields(exclude=exclude)
        except ValidationError as exc:
            errors = exc.update_error_dict(errors)
        terms = {
            name: getattr(self, name)
            for name in CHECKED_TERMS
            if name not in skipped and name not in errors
        }
        try:
            price_terms_check(terms)
            if "overage_tiers" in terms and not {"monthly_hard_cap"} & (skipped | set(errors)):
                uncapped_overage_check(
                    terms["overage_tiers"], capped=self.monthly_hard_cap is not None
                )
            if set(MONEY_TERMS) <= set(terms) and not {"monthly_hard_cap", "fine_tuning"} & (
                skipped | set(errors)
            ):
                unbilled_charges_check(terms, self)
        except ValidationError as exc:
            errors = exc.update_error_dict(errors)
        if self.is_current and "overage_tiers" in skipped and "is_current" not in skipped:
            # An old version's terms are read-only here, but it can be made current again:
            # not one whose overage is unpriced on no hard cap (new subscribers' usage free).
            try:
                uncapped_overage_check(self.overage_tiers, capped=self.monthly_hard_cap is not None)
            except ValidationError as exc:
                errors.setdefault("is_current", []).extend(exc.message_dict["overage_tiers"])
        if errors:
            raise ValidationError(errors)

    def validate_constraints(self, exclude: Collection[str] | None = None) -> None:
        """Every constraint but ``plan_one_current``: making a version current un-sets its
        slug's current one in the same transaction (plans/admin.py), which validating first
        would refuse. The database still enforces it."""
        super().validate_constraints(exclude={*(exclude or ()), "is_current"})
