"""economics 0004-0006: the API key joins the rollups' grain. Existing rows stay, unkeyed; the
old release (still writing during a rolling deploy) writes rows the database keys "", and
its updates of a grain find one row, as rows are written unkeyed until the rebuild; the
unique constraint is the wider one (on PostgreSQL built online: no index left behind); and
back, a grain's rows of several keys are merged into one."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time
from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.db.models import F

from economics.models import RollupsUnkeyed, UsageRollup
from economics.services import rollups_rebuild
from tests.factories import TenantFactory, ledger_row

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


def _upgraded_from_a_rollup(**sums):
    """A tenant's rollup written before 0004, then the migrations to the last: the rollup
    model of the release before, the tenant, and the rollup's grain."""
    executor = _migrate(BEFORE)
    try:
        old = executor.loader.project_state(BEFORE).apps.get_model("economics", "UsageRollup")
        tenant = TenantFactory()
        grain = dict(day=DAY, tenant_id=tenant.pk, model="minilm-l6", kind="inference",
                     livemode=True, plan_id="free@1")  # fmt: skip
        old.objects.create(**grain, **sums)
    finally:
        _migrate()
    return old, tenant, grain


@pytest.mark.django_db(transaction=True)
def test_the_key_migration_keeps_rollups_and_widens_the_grain_both_ways():
    old, tenant, grain = _upgraded_from_a_rollup(requests=3, inputs=30, tokens=300,
                                                 cost_micros=Decimal(5))  # fmt: skip

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


def _call(tenant, key, inputs, at):
    return ledger_row(
        event_id=f"req_{uuid.uuid4().hex}", kind="inference", tenant=tenant, api_key_id=key,
        livemode=True, model="minilm-l6", inputs=inputs, tokens=inputs, compute_ms=1.0,
        occurred_at=at, plan_id="free@1",
    )  # fmt: skip


@pytest.mark.django_db(transaction=True)
def test_through_the_rollout_a_grain_keeps_one_row_until_the_rebuild_keys_them():
    """The release before, still running through the rollout, adds a call to every row of
    its six-column grain: with rows of two keys it counted the call twice, and its void took
    the call's inputs from both rows. So an upgraded database writes unkeyed until the
    rebuild (run once that release has stopped) keys every row; a new one, keyed at once."""
    old, tenant, grain = _upgraded_from_a_rollup(requests=1, inputs=100, tokens=100)
    assert RollupsUnkeyed.objects.exists()  # an upgrade of a database with rollups

    at = datetime.combine(DAY, time(12), tzinfo=UTC)
    _call(tenant, "key_a", 5, at)  # this release's consumer, two keys
    _call(tenant, "key_b", 7, at)
    old.objects.filter(**grain).update(inputs=F("inputs") + 3)  # the release before's store
    rows = UsageRollup.objects.for_tenant(tenant).filter(day=DAY)
    assert [(r.api_key_id, r.inputs) for r in rows] == [("", 115)]  # counted once each

    rollups_rebuild()  # the release before has stopped; its call of 3 is in no ledger here
    assert not RollupsUnkeyed.objects.exists()
    assert sorted((r.api_key_id, r.inputs) for r in rows.all()) == [("key_a", 5), ("key_b", 7)]
    _call(tenant, "key_a", 1, at)
    assert rows.get(api_key_id="key_a").inputs == 6  # keyed from now on


@pytest.mark.django_db(transaction=True)
def test_a_database_without_rollups_is_keyed_from_the_migration_on():
    _migrate(BEFORE)
    _migrate()
    assert not RollupsUnkeyed.objects.exists()
    tenant = TenantFactory()
    _call(tenant, "key_a", 5, datetime.combine(DAY, time(12), tzinfo=UTC))
    assert UsageRollup.objects.for_tenant(tenant).get().api_key_id == "key_a"
