"""What a plan's price terms may be, checked in one place for the admin (``Plan.clean``)
and the pricing simulator: a table the rating engine cannot price must be refused where it
is written, not found by every request that rates usage with it."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.exceptions import ValidationError

from . import messages

# The plan every tenant without a paid one is on: never billed (no Stripe subscription).
FREE_SLUG = "free"

# Model tiers a plan prices separately. `int8` is the cheaper quantised tier.
MODEL_TIERS = ("standard", "int8")
# The currencies Stripe charges in (ISO 4217, lower case, as Stripe writes them).
CURRENCIES = frozenset(
    (  # noqa: SIM905  (as a list literal: 140 lines)
        "usd aed afn all amd ang aoa ars aud awg azn bam bbd bdt bgn bhd bif bmd bnd bob brl "
        "bsd bwp byn bzd cad cdf chf clp cny cop crc cve czk djf dkk dop dzd egp etb eur fjd "
        "fkp gbp gel gip gmd gnf gtq gyd hkd hnl htg huf idr ils inr isk jmd jod jpy kes kgs "
        "khr kmf krw kwd kyd kzt lak lbp lkr lrd lsl mad mdl mga mkd mmk mnt mop mur mvr mwk "
        "mxn myr mzn nad ngn nio nok npr nzd omr pab pen pgk php pkr pln pyg qar ron rsd rub "
        "rwf sar sbd scr sek sgd shp sle sos srd std szl thb tjs tnd top try ttd twd tzs uah "
        "ugx uyu uzs vnd vuv wst xaf xcd xof xpf yer zar zmw "
    ).split()
)

# Amounts are in Stripe's smallest unit of the currency (https://docs.stripe.com/currencies):
# a hundredth of the major unit except in these. NOTE: ISK, HUF and TWD are two-decimal in
# Stripe's API although charged in whole units, so they are not listed.
ZERO_DECIMAL = frozenset(
    "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split()  # noqa: SIM905
)
THREE_DECIMAL = frozenset("bhd jod kwd omr tnd".split())  # noqa: SIM905


def micros_per_minor(currency: str) -> int:
    """Micro-units of ``currency`` in one of its minor units: 10,000 micro-dollars to the
    cent, 1,000,000 micro-yen to the yen, 1,000 micro-dinars to the fils."""
    exponent = 0 if currency in ZERO_DECIMAL else 3 if currency in THREE_DECIMAL else 2
    return 10 ** (6 - exponent)


# NOTE: what money in a plan can be. A tier's unit price per 1,000 inputs below 10^12 minor
# units, with at most 6 decimal places, keeps the charge for any BigInteger of inputs inside
# Decimal's 28 digits (rating.py's ``_round`` raised InvalidOperation past them: "1e40");
# the base fee fits its column (PositiveIntegerField, 32 bits on PostgreSQL), the price per
# 1,000 trained tokens its DecimalField(max_digits=12, decimal_places=4), and counts and
# tier ceilings a BigInteger.
UNIT_AMOUNT_DIGITS, UNIT_AMOUNT_PLACES = 12, 6
FINETUNE_AMOUNT_DIGITS, FINETUNE_AMOUNT_PLACES = 8, 4
MAX_BASE_FEE = 2**31 - 1
MAX_COUNT = 2**63 - 1


def amount_check(
    value: Any,
    field: str,
    *,
    label: str = "",
    digits: int = UNIT_AMOUNT_DIGITS,
    places: int = UNIT_AMOUNT_PLACES,
) -> Decimal:
    """A unit price: a non-negative number of minor units (an integer, or a decimal string
    such as "0.5"; never a float, which cannot hold money exactly), below 10^``digits`` and
    with at most ``places`` decimal places. ``label`` says where in ``field`` it was."""
    prefix = f"{label}: " if label else ""

    def refuse(message: str) -> ValidationError:
        return ValidationError({field: prefix + message})

    if isinstance(value, bool) or not isinstance(value, int | str | Decimal):
        raise refuse(messages.AMOUNT_TYPE)
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise refuse(messages.AMOUNT_NOT_A_NUMBER.format(value=repr(value))) from None
    if not amount.is_finite() or amount < 0:
        raise refuse(messages.AMOUNT_NEGATIVE)
    limit = Decimal(10) ** digits
    if amount >= limit:  # NOTE: exact comparisons; no context rounding before the checks
        raise refuse(messages.AMOUNT_TOO_LARGE.format(limit=f"{limit:,}", digits=digits))
    if amount != amount.quantize(Decimal(1).scaleb(-places)):
        raise refuse(messages.AMOUNT_TOO_PRECISE.format(places=places))
    return amount


def count_check(value: Any, field: str, maximum: int = MAX_COUNT) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValidationError({field: messages.COUNT})
    if value > maximum:
        raise ValidationError({field: messages.COUNT_TOO_LARGE.format(maximum=f"{maximum:,}")})
    return value


def overage_tiers_check(tiers: Any, field: str = "overage_tiers") -> None:
    """``{"standard": [{"up_to": 1000000, "unit_amount": "40"}, {"up_to": null, ...}], ...}``:
    known model tiers only, each a graduated list whose ceilings rise and whose last tier
    has none (usage past a last ceiling would otherwise be free)."""
    if not isinstance(tiers, dict):
        raise ValidationError({field: messages.TIERS_SHAPE})
    for name, steps in tiers.items():
        where = f"{field}.{name}"
        if name not in MODEL_TIERS:
            raise ValidationError(
                {
                    field: messages.TIERS_UNKNOWN.format(
                        name=repr(name), known=", ".join(MODEL_TIERS)
                    )
                }
            )
        if not isinstance(steps, list) or not steps:
            raise ValidationError({field: messages.TIERS_EMPTY.format(where=where)})
        floor = 0
        for index, step in enumerate(steps):
            at = f"{where}[{index}]"
            if not isinstance(step, dict) or set(step) != {"up_to", "unit_amount"}:
                raise ValidationError({field: messages.TIER_SHAPE.format(at=at)})
            amount_check(step["unit_amount"], field, label=f"{at}.unit_amount")
            ceiling, last = step["up_to"], index == len(steps) - 1
            if last and ceiling is not None:
                raise ValidationError({field: messages.TIER_LAST_BOUNDED.format(at=at)})
            if not last and (
                isinstance(ceiling, bool)
                or not isinstance(ceiling, int)
                or not floor < ceiling <= MAX_COUNT
            ):
                raise ValidationError(
                    {field: messages.TIER_CEILING.format(at=at, floor=floor, maximum=MAX_COUNT)}
                )
            if not last:
                floor = ceiling
    missing = [name for name in MODEL_TIERS if name not in tiers]
    if tiers and missing:
        # Usage of a tier left out is priced at nothing past the included inputs: on a plan
        # without a hard cap, unlimited and free, which no operator means by leaving it out.
        raise ValidationError({field: messages.TIERS_MISSING.format(
            given=", ".join(tiers), missing=", ".join(missing))})  # fmt: skip


def uncapped_overage_check(overage_tiers: Any, *, capped: bool) -> None:
    """A plan without a hard cap prices overage (``overage_tiers_check`` has it price every
    tier once it prices one): ``{}`` on such a plan made everything past the included inputs
    free, which no operator means by leaving the field empty."""
    if not capped and isinstance(overage_tiers, dict) and not overage_tiers:
        raise ValidationError(
            {"overage_tiers": messages.UNCAPPED_UNPRICED.format(tiers=", ".join(MODEL_TIERS))}
        )


# The terms that decide what a plan charges (``unbilled_charges_check`` needs all four).
MONEY_TERMS = ("base_fee", "included_inputs", "overage_tiers", "finetune_unit_amount")


def unbilled_charges_check(terms: dict[str, Any], plan: Any) -> None:
    """A plan without a base fee gets no Stripe subscription, so nothing it charges is ever
    billed: the admin took one with overage prices and no cap, and its usage was shown as
    owed on /v1/usage and the upcoming invoice but never invoiced. Such a plan must charge
    nothing: inputs capped at the included ones (or free past them), fine-tuning free.
    ``terms`` already checked (``price_terms_check``), all four present; ``plan``'s slug,
    ``monthly_hard_cap`` and ``fine_tuning`` go with them. A version of the free plan is
    never billed whatever its fee (a fee of 19 USD was accepted, shown due on its tenants'
    upcoming invoices and counted as revenue, never charged: an audit)."""
    hard_cap, fine_tuning = plan.monthly_hard_cap, plan.fine_tuning
    if plan.slug == FREE_SLUG and terms["base_fee"]:
        raise ValidationError({"base_fee": messages.FREE_BASE_FEE})
    if terms["base_fee"]:
        return
    overage_priced = any(
        Decimal(str(step["unit_amount"])) > 0
        for steps in terms["overage_tiers"].values()
        for step in steps
    )
    if overage_priced and (hard_cap is None or hard_cap > terms["included_inputs"]):
        raise ValidationError({"overage_tiers": messages.UNBILLED_OVERAGE})
    if fine_tuning and Decimal(str(terms["finetune_unit_amount"])) > 0:
        raise ValidationError({"finetune_unit_amount": messages.UNBILLED_FINETUNE})


def price_terms_check(terms: dict[str, Any]) -> dict[str, Any]:
    """The price terms present in ``terms`` checked (ValidationError naming the field) and
    normalised: ``finetune_unit_amount`` as a Decimal. The admin (``Plan.clean``) and the
    pricing simulator both check here, so they accept the same terms."""
    checked = dict(terms)
    if "base_fee" in terms:
        checked["base_fee"] = count_check(terms["base_fee"], "base_fee", MAX_BASE_FEE)
    if "included_inputs" in terms:
        checked["included_inputs"] = count_check(terms["included_inputs"], "included_inputs")
    if "finetune_unit_amount" in terms:
        checked["finetune_unit_amount"] = amount_check(
            terms["finetune_unit_amount"],
            "finetune_unit_amount",
            digits=FINETUNE_AMOUNT_DIGITS,
            places=FINETUNE_AMOUNT_PLACES,
        )
    if "overage_tiers" in terms:
        overage_tiers_check(terms["overage_tiers"])
    if "cached_results_billed" in terms and not isinstance(terms["cached_results_billed"], bool):
        raise ValidationError({"cached_results_billed": messages.CACHED_BILLED})
    if "currency" in terms and terms["currency"] not in CURRENCIES:
        raise ValidationError({"currency": messages.CURRENCY})
    return checked
