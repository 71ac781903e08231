"""The periods a Stripe subscription renews into, as admission counts them while a renewal's
webhook is late (``billing.periods.monthly_periods_after``): monthly, on the anchor's day,
clamped to short months as Stripe clamps them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from billing.periods import monthly_periods_after


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


@pytest.mark.parametrize(
    ("period", "moment", "expected"),
    [
        # Anchored on the 31st: clamped to February's last day, then the 31st again.
        ((at(2025, 12, 31, 10), at(2026, 1, 31, 10)), at(2026, 3, 30),
         (at(2026, 2, 28, 10), at(2026, 3, 31, 10))),
        # On the 29th, from a period that ended on February's last day.
        ((at(2026, 1, 29), at(2026, 2, 28)), at(2026, 3, 1), (at(2026, 2, 28), at(2026, 3, 29))),
        ((at(2026, 11, 29), at(2026, 12, 29)), at(2027, 3, 1), (at(2027, 2, 28), at(2027, 3, 29))),
        # A first period of another length (a trial): its end is the anchor.
        ((at(2026, 3, 20), at(2026, 4, 3)), at(2026, 4, 10), (at(2026, 4, 3), at(2026, 5, 3))),
        ((at(2026, 3, 31), at(2026, 4, 30)), at(2026, 5, 1), (at(2026, 4, 30), at(2026, 5, 31))),
        # Across the year, at its end's very moment.
        ((at(2026, 11, 15), at(2026, 12, 15)), at(2026, 12, 15),
         (at(2026, 12, 15), at(2027, 1, 15))),
    ],
)  # fmt: skip
def test_the_periods_a_subscription_renews_into(period, moment, expected):
    assert monthly_periods_after(*period, moment) == expected
