"""economics 0004: the API key joins the rollups' grain. Existing rows stay, unkeyed; the
old release (still writing during a rolling deploy) writes rows the database keys ""; the
unique constraint is the wider one (on PostgreSQL built online: no index left behind); and
back, a grain's rows of several keys are merged into one."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor

from economics.models import UsageRollup
from tests.factories import TenantFactory

BEFORE = [("economics", "0003_rollup_last_at")]
DAY = date(2026, 11, 2)


def _migrate(target=None):
    executor = MigrationExecutor(connection)
    executor.migrate(target or executor.loader.graph.leaf_nodes())
    return executor


def _grain_columns():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT a.attname FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid"
            " AND a.attnum = ANY(c.conkey) WHERE c.conname = 'rollup_grain'"
        )
        columns = {name for (name,) in cursor.fetchall()}
        cursor.execute("SELECT to_regclass('rollup_grain_online') IS NULL")
        return columns, cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_the_key_migration_keeps_rollups_and_widens_the_grain_both_ways():
    executor = _migrate(BEFORE)
    try:
        old = executor.loader.project_state(BEFORE).apps.get_model("economics", "UsageRollup")
        tenant = TenantFactory()
        grain = dict(day=DAY, tenant_id=tenant.pk, model="minilm-l6", kind="inference",
                     livemode=True, plan_id="free@1")  # fmt: skip
        old.objects.create(**grain, requests=3, inputs=30, tokens=300, cost_micros=Decimal(5))
    finally:
        _migrate()

    row = UsageRollup.objects.for_tenant(tenant).get()
    assert (row.api_key_id, row.requests, row.inputs) == ("", 3, 30)  # unkeyed, kept
    # One row per key of a grain now, and still one only.
    UsageRollup.objects.unscoped().create(**grain, api_key_id="key_a", requests=1, inputs=4)
    with pytest.raises(IntegrityError), transaction.atomic():
        UsageRollup.objects.unscoped().create(**grain, api_key_id="key_a", requests=1, inputs=4)
    # The release before writes rows without the column: the database keys them "".
    old.objects.create(**{**grain, "day": date(2026, 11, 3)}, requests=1, inputs=2)
    assert UsageRollup.objects.for_tenant(tenant).get(day=date(2026, 11, 3)).api_key_id == ""
    if connection.vendor == "postgresql":
        columns, no_leftover = _grain_columns()
        assert "api_key_id" in columns and len(columns) == 7 and no_leftover

    _migrate(BEFORE)
    try:
        merged = old.objects.filter(day=DAY).get()  # the two keys' rows, summed
        assert (merged.requests, merged.inputs, merged.tokens) == (4, 34, 300)
        if connection.vendor == "postgresql":
            columns, no_leftover = _grain_columns()
            assert "api_key_id" not in columns and len(columns) == 6 and no_leftover
    finally:
        _migrate()
    assert UsageRollup.objects.for_tenant(tenant).get(day=DAY).api_key_id == ""
