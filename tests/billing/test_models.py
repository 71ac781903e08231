"""Billing's columns hold what Stripe sends them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db.backends.postgresql.operations import DatabaseOperations as PostgreSQL

from billing.models import Invoice, Subscription
from tests.factories import subscribe

pytestmark = pytest.mark.django_db

AFTER_2038 = int(datetime(2040, 1, 1, tzinfo=UTC).timestamp())


def test_stripe_timestamps_hold_moments_after_january_2038(tenant):
    """Unix seconds pass 2**31 - 1 on 19 January 2038: a 32-bit column (PostgreSQL's
    integer) cannot hold them, a 64-bit one (bigint) can. SQLite would store either, so
    the column types are checked as PostgreSQL makes them."""
    int32_max = PostgreSQL.integer_field_ranges["IntegerField"][1]
    assert int32_max < AFTER_2038
    for model in (Subscription, Invoice):
        field = model._meta.get_field("stripe_updated_at")
        assert PostgreSQL.integer_field_ranges[field.get_internal_type()][1] >= AFTER_2038

    sub = subscribe(tenant, "pro", stripe_updated_at=AFTER_2038)
    invoice = Invoice.objects.create(
        id="in_2040", tenant=tenant, status="paid", currency="usd",
        created_at=datetime(2040, 1, 1, tzinfo=UTC), stripe_updated_at=AFTER_2038,
    )  # fmt: skip
    sub.refresh_from_db()
    invoice.refresh_from_db()
    assert sub.stripe_updated_at == invoice.stripe_updated_at == AFTER_2038
