"""The period and price table operators enter on the margins page and the simulator."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from billing.periods import calendar_month

from .simulation import day_parse, prices_parse, range_check

EXAMPLE_PRICES = '{"pro": {"base_fee": 3900, "included_inputs": 50000}}'


def this_month() -> tuple[datetime, datetime]:
    return calendar_month(datetime.now(UTC))


def range_initial() -> dict[str, str]:
    """What an unbound form's inputs show: this month."""
    start, end = this_month()
    return {"start": f"{start:%Y-%m-%d}", "end": f"{end:%Y-%m-%d}", "prices": EXAMPLE_PRICES}


class RangeForm(forms.Form):
    """[start, end) in whole UTC days; either left empty is this month's."""

    start = forms.CharField(required=False, help_text="a date, inclusive (2026-11-01)")
    end = forms.CharField(required=False, help_text="a date, exclusive (2026-12-01)")

    def _day(self, name: str, default: datetime) -> datetime:
        text = self.cleaned_data.get(name) or ""
        if not text.strip():
            return default
        try:
            return day_parse(text)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None

    def clean_start(self) -> datetime:
        return self._day("start", this_month()[0])

    def clean_end(self) -> datetime:
        return self._day("end", this_month()[1])

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if "start" in data and "end" in data:
            try:
                range_check(data["start"], data["end"])
            except ValueError as exc:
                raise ValidationError(str(exc)) from None
        return data


class SimulateForm(RangeForm):
    prices = forms.CharField(widget=forms.Textarea(attrs={"rows": 8, "cols": 100}))

    def clean_prices(self) -> dict[str, dict[str, Any]]:
        try:
            return prices_parse(self.cleaned_data["prices"])
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
