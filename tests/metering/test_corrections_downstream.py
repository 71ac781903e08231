"""What a ledger correction changes beyond /v1/usage: the margins (revenue down, cost
kept), the rollups (as a rebuild from the ledger says), the quota (the allowance back, and
reconciliation keeps it back), and the migration that made quantities signed (existing rows
kept as they were)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection

from economics.models import UsageRollup
from economics.selectors import margins
from economics.services import rollups_rebuild
from limits.reconcile import quota_reconcile_tenant
from limits.services import limits_admit, limits_settle
from metering.corrections import usage_record_void
from metering.models import UsageRecord
from metering.sums import usage_sums
from tests.factories import TenantFactory, make_key, rollups_unkeyed, subscribe
from tests.limits.test_limits import custom_plan, key_of, on_plan
from tests.limits.test_quota_after_loss import counter, ledger, refused
from tests.metering.test_corrections import call

pytestmark = pytest.mark.django_db
NOW = datetime.now(UTC)
MONTH = NOW.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
NEXT = (MONTH + timedelta(days=32)).replace(day=1)


def _rollups(tenant):
    rows = UsageRollup.objects.for_tenant(tenant).order_by("day", "model")
    return list(rows.values("day", "model", "plan_id", "requests", "inputs", "tokens",
                            "compute_ms", "cost_micros"))  # fmt: skip


def test_a_void_lowers_revenue_and_keeps_the_cost_in_the_margins(tenant):
    subscribe(tenant, "pro")
    call(tenant, 100_000, at=NOW)  # all included
    wrong = call(tenant, 20_000, at=NOW)  # 20,000 over, at 40 per 1,000: 800 cents
    before = {r["tenant"]: r for r in margins(start=MONTH, end=NEXT, by="tenant")}[tenant.pk]

    usage_record_void(event_id=wrong, reason="duplicate")

    after = {r["tenant"]: r for r in margins(start=MONTH, end=NEXT, by="tenant")}[tenant.pk]
    assert before["revenue_micros"] - after["revenue_micros"] == 800 * 10_000
    assert after["cost_micros"] == before["cost_micros"] == Decimal(1_000)  # compute was spent
    assert after["margin_micros"] == before["margin_micros"] - 800 * 10_000
    assert (after["requests"], after["inputs"]) == (2, 100_000)  # the call was made
    # The rollups the pages read are what a rebuild from the ledger makes of it.
    incremental = _rollups(tenant)
    assert [(r["requests"], r["inputs"]) for r in incremental] == [(2, 100_000)]
    rollups_rebuild()
    assert _rollups(tenant) == incremental


def test_a_void_gives_the_inputs_back_to_the_quota_and_reconciliation_keeps_them(
    tenant, django_capture_on_commit_callbacks
):
    sub = on_plan(tenant, custom_plan(monthly_hard_cap=100))
    key = key_of(tenant, make_key(tenant, ["inference"]))
    request_id = f"req_{uuid.uuid4().hex[:24]}"
    limits_settle(limits_admit(api_key=key, request_id=request_id, inputs=60), succeeded=True)
    ledger(key, 60, request_id=request_id)
    refused(key, 50)  # 60 + 50 > 100
    assert counter(key, sub.current_period_start) == 60

    with django_capture_on_commit_callbacks(execute=True):
        usage_record_void(event_id=request_id, reason="answered wrongly, refunded")

    assert counter(key, sub.current_period_start) == 0
    check = quota_reconcile_tenant(api_key=key)
    assert (check.ledger_inputs, check.counter, check.raised_by) == (0, 0, 0)
    limits_admit(api_key=key, request_id="req_after", inputs=100)  # the whole cap again


def test_a_void_in_a_past_quota_period_leaves_the_counter_alone(
    tenant, django_capture_on_commit_callbacks
):
    sub = on_plan(tenant, custom_plan(monthly_hard_cap=100))
    key = key_of(tenant, make_key(tenant, ["inference"]))
    limits_settle(limits_admit(api_key=key, request_id="req_now", inputs=30), succeeded=True)
    old = call(tenant, 40, at=sub.current_period_start - timedelta(hours=1))
    with django_capture_on_commit_callbacks(execute=True):
        usage_record_void(event_id=old, reason="test")
    assert counter(key, sub.current_period_start) == 30  # this period's calls, untouched


OLD_CHECKS = {f"CHECK (({name} >= 0))" for name in ("inputs", "tokens", "cached")}


def _old_checks_left() -> set[str]:
    """The PositiveIntegerField checks still on the ledger or any of its partitions."""
    if connection.vendor != "postgresql":
        return set()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.conrelid::regclass::text || ' ' || pg_get_constraintdef(c.oid)"
            " FROM pg_constraint c WHERE c.contype = 'c' AND c.conrelid IN"
            " (SELECT relid FROM pg_partition_tree('metering_usagerecord'::regclass))"
        )
        return {row for (row,) in cursor.fetchall() if row.split(" ", 1)[1] in OLD_CHECKS}


def _new_checks() -> list[tuple[str, bool]]:
    """The ledger parent's checks of migration 0008, and whether each is validated."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT conname, convalidated FROM pg_constraint WHERE conrelid ="
            " 'metering_usagerecord'::regclass AND contype = 'c' ORDER BY conname"
        )
        return list(cursor.fetchall())


@pytest.mark.django_db(transaction=True)
def test_the_migration_keeps_existing_rows_and_lets_corrections_be_negative():
    from django.db.migrations.executor import MigrationExecutor

    before = [("metering", "0006_ledger_partitioned")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    try:
        old_model = executor.loader.project_state(before).apps.get_model("metering", "UsageRecord")
        tenant = TenantFactory()
        at = datetime.now(UTC) - timedelta(minutes=1)
        old_model.objects.create(
            event_id="req_before_migration", kind="inference", tenant_id=tenant.pk,
            api_key_id="key_a", livemode=True, model="minilm-l6", inputs=3, tokens=30,
            compute_ms=1.5, cached=1, cost_micros=Decimal("12.5"), plan_id="free@1",
            occurred_at=at,
        )  # fmt: skip
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())

    row = UsageRecord.objects.for_tenant(tenant).get(event_id="req_before_migration")
    assert (row.inputs, row.tokens, row.cached, row.compute_ms) == (3, 30, 1, 1.5)
    assert (row.cost_micros, row.plan_id, row.occurred_at) == (Decimal("12.5"), "free@1", at)
    assert (row.corrects, row.reason, row.corrected_by) == ("", "", "")
    assert _old_checks_left() == set()
    if connection.vendor == "postgresql":  # added NOT VALID, then validated
        assert _new_checks() == [
            ("usage_corrections_not_positive", True), ("usage_counts_not_negative", True)
        ]  # fmt: skip
    correction = usage_record_void(event_id=row.event_id, reason="after the migration")
    assert UsageRecord.objects.for_tenant(tenant).get(pk=correction.pk).inputs == -3
    # The release before, still running during a rolling deploy, writes rows without the new
    # columns: the database fills them in (its usage consumer stalled on NOT NULL before).
    old_model.objects.create(
        event_id="req_old_release", kind="inference", tenant_id=tenant.pk, api_key_id="key_a",
        livemode=True, model="minilm-l6", inputs=1, tokens=10, compute_ms=1.0, cached=0,
        cost_micros=Decimal(0), plan_id="free@1", occurred_at=datetime.now(UTC),
    )  # fmt: skip
    late = UsageRecord.objects.for_tenant(tenant).get(event_id="req_old_release")
    assert (late.corrects, late.reason, late.corrected_by) == ("", "", "")


@pytest.mark.django_db(transaction=True)
def test_a_give_back_that_fails_after_the_commit_still_returns_the_void(monkeypatch, caplog):
    """The row is committed: the void stands and says so (a failing robust hook, a partial
    without __qualname__, raised AttributeError through the command and the admin)."""
    import redis

    from metering import corrections

    tenant = TenantFactory()
    wrong = call(tenant, 5)

    def redis_gone(give):
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379.")

    monkeypatch.setattr(corrections, "quota_give_back", redis_gone)
    correction = usage_record_void(event_id=wrong, reason="after the commit")
    assert UsageRecord.objects.for_tenant(tenant).get(pk=correction.pk).inputs == -5
    assert "voided inputs not given back (Redis)" in caplog.text


def test_the_admin_says_nothing_changed_where_redis_cannot_be_reached(tenant, monkeypatch):
    import redis

    from metering import corrections
    from tests.factories import staff_client

    wrong = call(tenant, 5)
    pk = UsageRecord.objects.for_tenant(tenant).get(event_id=wrong).pk

    def redis_gone(**kwargs):
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379.")

    monkeypatch.setattr(corrections, "quota_give_back_begin", redis_gone)
    page = staff_client(superuser=True).post(
        "/admin/metering/usagerecord/",
        {"action": "void_selected", "_selected_action": [pk], "confirm": "yes", "reason": "x"},
        follow=True,
    )
    assert page.status_code == 200
    assert f"Nothing was changed for {wrong}: Redis cannot be reached." in page.content.decode()
    assert not UsageRecord.objects.for_tenant(tenant).exclude(corrects="").exists()


@pytest.mark.django_db(transaction=True)
def test_a_void_committing_during_a_rollup_rebuild_is_netted(monkeypatch):
    """The void's row is not committed when the rebuild reads the ledger, and it reaches
    the rollups while the rebuild is between its delete and its commit: it used to find
    its grain's row deleted under it, and (a negative row, nothing to net from) left the
    rollups overstating the tenant's usage until the next rebuild."""
    if connection.vendor != "postgresql":
        pytest.skip("SQLite runs one writer at a time: the interleaving cannot happen")
    import threading

    from economics import services as economics_services
    from metering import corrections

    tenant = TenantFactory()
    subscribe(tenant, "pro")
    wrong = call(tenant, 20_000, at=NOW)
    inserted, go = threading.Event(), threading.Event()
    real_apply, real_plans = corrections.rollup_apply, economics_services.tenant_plans_now

    def apply_late(*, rows):
        inserted.set()  # the correcting row is in the ledger, not committed
        assert go.wait(10)
        real_apply(rows=rows)

    def plans_slowly(tenant_ids):
        go.set()  # the rebuild has read the ledger; the void goes on to the rollups
        threading.Event().wait(1.0)  # (its rollup write starts meanwhile)
        return real_plans(tenant_ids)

    monkeypatch.setattr(corrections, "rollup_apply", apply_late)
    monkeypatch.setattr(economics_services, "tenant_plans_now", plans_slowly)
    errors: list[BaseException] = []

    def run(work):
        try:
            work()
        except BaseException as exc:  # (reported by the assertion below)
            errors.append(exc)
        finally:
            connection.close()

    void = threading.Thread(target=run, args=(lambda: usage_record_void(
        event_id=wrong, reason="duplicate"),))  # fmt: skip
    void.start()
    assert inserted.wait(10)
    rebuild = threading.Thread(target=run, args=(rollups_rebuild,))
    rebuild.start()
    rebuild.join(30)
    void.join(30)
    assert errors == []
    assert [(r["requests"], r["inputs"]) for r in _rollups(tenant)] == [(1, 0)]
    monkeypatch.undo()
    rollups_rebuild()
    assert [(r["requests"], r["inputs"]) for r in _rollups(tenant)] == [(1, 0)]


def _by_key(tenant):
    rows = UsageRollup.objects.for_tenant(tenant)
    return {r.api_key_id: (r.requests, r.inputs, r.tokens) for r in rows}


def test_a_void_of_a_call_summed_before_the_upgrade_is_netted_from_its_unkeyed_rollup(
    tenant, caplog
):
    """A call summed before the API key joined the rollups' grain is in its day's unkeyed
    row: its void nets it out of that row, whether its key has a row of that day since the
    upgrade (which does not hold it) or not, and the day's usage by key is the ledger's."""
    at = NOW - timedelta(minutes=5)
    of_a = call(tenant, 700, at=at, key="key_a")
    of_b = call(tenant, 300, at=at, key="key_b")
    call(tenant, 200, at=at, key="key_b")
    rollups_unkeyed(tenant=tenant, before=NEXT.date())
    assert _by_key(tenant) == {"": (3, 1200, 12_000)}
    call(tenant, 50, at=at, key="key_a")  # after the upgrade: a row of its key
    assert _by_key(tenant) == {"": (3, 1200, 12_000), "key_a": (1, 50, 500)}

    usage_record_void(event_id=of_b, reason="duplicate")  # no row of key_b
    usage_record_void(event_id=of_a, reason="duplicate")  # key_a's row holds 50, not 700

    assert _by_key(tenant) == {"": (3, 200, 2000), "key_a": (1, 50, 500)}  # netted, not lost
    assert "rollups lack the rows" not in caplog.text
    day = datetime.combine(at.date(), datetime.min.time(), tzinfo=UTC)
    by_key = usage_sums(tenant=tenant, livemode=True, start=day, end=day + timedelta(days=1),
                        by=("api_key_id",))  # fmt: skip
    assert {r["api_key_id"]: (r["requests"], r["inputs"]) for r in by_key} == {
        "key_a": (2, 50), "key_b": (2, 200)
    }  # fmt: skip
    # A rebuild keys the day's rows from the ledger, to the same usage.
    rollups_rebuild()
    assert _by_key(tenant) == {"key_a": (2, 50, 500), "key_b": (2, 200, 2000)}


def test_a_void_the_rollups_cannot_net_is_logged_not_lost_silently(tenant, caplog):
    """The bad case: a ledger restored without its rollups (none for the call's day, keyed or
    not): the void is made, nothing goes negative, and the log names the rebuild."""
    wrong = call(tenant, 700, at=NOW - timedelta(minutes=5), key="key_a")
    UsageRollup.objects.for_tenant(tenant).delete()

    usage_record_void(event_id=wrong, reason="duplicate")

    assert UsageRecord.objects.for_tenant(tenant).filter(corrects=wrong).exists()
    assert _by_key(tenant) == {}
    assert "rollups lack the rows a correction nets" in caplog.text
    assert "run rebuild_rollups" in caplog.text
    rollups_rebuild()
    assert _by_key(tenant) == {"key_a": (1, 0, 0)}
