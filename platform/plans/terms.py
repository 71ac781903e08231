"""What a plan's price terms may be, checked in one place for the admin (``Plan.clean``)
and the pricing simulator: a table the rating engine cannot price must be refused where it
is written, not found by every request that rates usage with it."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.exceptions import ValidationError

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


def amount_check(value: Any, field: str) -> Decimal:
    """A unit price: a non-negative, finite number of minor units (an integer, or a decimal
    string such as "0.5"; never a float, which cannot hold money exactly)."""
    if isinstance(value, bool) or not isinstance(value, int | str | Decimal):
        raise ValidationError({field: "must be an integer or a decimal string of minor units"})
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValidationError({field: f"{value!r} is not a number"}) from None
    if not amount.is_finite() or amount < 0:
        raise ValidationError({field: "must be a finite amount of at least 0"})
    return amount


def count_check(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValidationError({field: "must be a whole number of at least 0"})
    return value


def overage_tiers_check(tiers: Any, field: str = "overage_tiers") -> None:
    """``{"standard": [{"up_to": 1000000, "unit_amount": "40"}, {"up_to": null, ...}], ...}``:
    known model tiers only, each a graduated list whose ceilings rise and whose last tier
    has none (usage past a last ceiling would otherwise be free)."""
    if not isinstance(tiers, dict):
        raise ValidationError({field: 'must be an object like {"standard": [...]}'})
    for name, steps in tiers.items():
        where = f"{field}.{name}"
        if name not in MODEL_TIERS:
            raise ValidationError(
                {field: f"unknown model tier {name!r} ({', '.join(MODEL_TIERS)})"}
            )
        if not isinstance(steps, list) or not steps:
            raise ValidationError({field: f"{where} must be a non-empty list of tiers"})
        floor = 0
        for index, step in enumerate(steps):
            at = f"{where}[{index}]"
            if not isinstance(step, dict) or set(step) != {"up_to", "unit_amount"}:
                raise ValidationError({field: f'{at} must be {{"up_to": ..., "unit_amount": ...}}'})
            amount_check(step["unit_amount"], field)
            ceiling, last = step["up_to"], index == len(steps) - 1
            if last and ceiling is not None:
                raise ValidationError({field: f"{at}: the last tier's up_to must be null"})
            if not last:
                if isinstance(ceiling, bool) or not isinstance(ceiling, int) or ceiling <= floor:
                    raise ValidationError(
                        {field: f"{at}.up_to must be a whole number above {floor}"}
                    )
                floor = ceiling


def price_terms_check(terms: dict[str, Any]) -> dict[str, Any]:
    """The price terms present in ``terms`` checked (ValidationError naming the field) and
    normalised: ``finetune_unit_amount`` as a Decimal."""
    checked = dict(terms)
    for field in ("base_fee", "included_inputs"):
        if field in terms:
            checked[field] = count_check(terms[field], field)
    if "finetune_unit_amount" in terms:
        checked["finetune_unit_amount"] = amount_check(
            terms["finetune_unit_amount"], "finetune_unit_amount"
        )
    if "overage_tiers" in terms:
        overage_tiers_check(terms["overage_tiers"])
    if "cached_results_billed" in terms and not isinstance(terms["cached_results_billed"], bool):
        raise ValidationError({"cached_results_billed": "must be true or false"})
    if "currency" in terms and terms["currency"] not in CURRENCIES:
        raise ValidationError(
            {"currency": "must be a currency Stripe charges in, lower case (usd, eur, ...)"}
        )
    return checked
