"""The ledger's admin list page at scale: its search matches whole ids, tenants and models
exactly, and the search and the correction and kind filters read the rows they list, not
every row of every month (on PostgreSQL, counted in the plans the database ran)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.db.models import Q
from django.test import Client
from django.test.utils import CaptureQueriesContext

from inference.models import AIModel
from metering.models import UsageRecord
from tenants.models import Tenant
from tests.factories import TenantFactory

pytestmark = pytest.mark.django_db
on_postgresql = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the plans are PostgreSQL's"
)
PAGE = "/admin/metering/usagerecord/"


def _rows(tenant: Tenant, count: int, start: int = 0, **fields: Any) -> None:
    now = datetime.now(UTC)
    UsageRecord.objects.bulk_create(
        UsageRecord(**{
            "event_id": f"req_{start + i}", "kind": "inference", "tenant": tenant,
            "api_key_id": f"key_{tenant.slug}", "model": "minilm-l6", "inputs": 1, "tokens": 5,
            "compute_ms": 1.0, "occurred_at": now - timedelta(seconds=start + i), **fields,
        })
        for i in range(count)
    )  # fmt: skip


def _void(event_id: str) -> None:
    """A correcting row as ``metering.corrections`` appends it (without the quota's Redis)."""
    row = UsageRecord.objects.unscoped().get(event_id=event_id)
    UsageRecord.objects.create(
        event_id=f"void_{event_id}", kind=row.kind, tenant_id=row.tenant_id,
        api_key_id=row.api_key_id, model=row.model, inputs=-row.inputs, tokens=-row.tokens,
        compute_ms=0, occurred_at=row.occurred_at, corrects=event_id, reason="test",
    )  # fmt: skip


def _listed(client: Client, query: str) -> set[str]:
    response = client.get(PAGE + query)
    assert response.status_code == 200
    rows = response.context["cl"].result_list
    return {row.event_id for row in rows}


def test_the_search_matches_whole_ids_tenants_and_models_exactly(admin_client):
    acme, other = TenantFactory(slug="acme"), TenantFactory(slug="acme-labs")
    _rows(acme, 12)
    _rows(other, 3, start=100, model="ft:minilm-l6:acme-labs:ftjob_1")
    _void("req_1")

    # An event id: that event and the row that voids it; not the ids it is a prefix of (a
    # contains-search listed req_10 and req_11 too, reading every row to find them).
    assert _listed(admin_client, "?q=req_1") == {"req_1", "void_req_1"}
    assert _listed(admin_client, "?q=void_req_1") == {"void_req_1"}
    assert _listed(admin_client, "?q=req_") == set()
    # A tenant by its slug or its id: its rows only, not those of a slug it is a prefix of.
    acme_rows = {f"req_{i}" for i in range(12)} | {"void_req_1"}
    assert _listed(admin_client, "?q=acme") == acme_rows
    assert _listed(admin_client, f"?q={other.pk}") == {"req_100", "req_101", "req_102"}
    assert _listed(admin_client, "?q=key_acme-labs") == {"req_100", "req_101", "req_102"}
    # A registered model's id; an unregistered one is the ?model= filter's.
    AIModel.objects.create(
        id="ft:minilm-l6:acme-labs:ftjob_1", tenant=other, kind="fine_tuned",
        base_model="minilm-l6",
    )  # fmt: skip
    assert _listed(admin_client, "?q=ft:minilm-l6:acme-labs:ftjob_1") == {
        "req_100", "req_101", "req_102"
    }  # fmt: skip
    assert _listed(admin_client, "?model=ft:minilm-l6:acme-labs:ftjob_1") == {
        "req_100", "req_101", "req_102"
    }  # fmt: skip
    # Several words: each must match.
    assert _listed(admin_client, "?q=acme req_3") == {"req_3"}
    assert _listed(admin_client, "?q=acme-labs req_3") == set()
    # The page says what the box matches.
    assert "Exact match, whole ids only" in admin_client.get(PAGE).content.decode()


# -- how many ledger rows each page reads (PostgreSQL) --------------------------------------


def _ledger_rows_read(sql: str, params: Any = ()) -> int:
    """Rows of the ledger's tables that the database read to answer ``sql``: those it
    returned from each scan and those a scan read and threw away."""
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", params)
        plan = cursor.fetchone()[0]
    read = 0
    nodes = [(json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]]
    while nodes:
        node = nodes.pop()
        nodes += node.get("Plans", [])
        if node.get("Relation Name", "").startswith(UsageRecord._meta.db_table):
            kept, dropped = node["Actual Rows"], node.get("Rows Removed by Filter", 0)
            dropped += node.get("Rows Removed by Index Recheck", 0)
            read += (kept + dropped) * node["Actual Loops"]
    return read


def _page_reads(client: Client, query: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(PAGE + query).status_code == 200
    ledger = [q["sql"] for q in queries.captured_queries if "metering_usagerecord" in q["sql"]]
    assert len(ledger) == 2, ledger  # the capped count and the page
    return sum(_ledger_rows_read(sql) for sql in ledger)


def _big_ledger() -> tuple[Tenant, Tenant]:
    big, small = TenantFactory(slug="big"), TenantFactory(slug="small")
    _rows(big, 4000)
    _rows(small, 3, start=5000)
    _rows(big, 4, start=6000, kind="fine_tune", model="ft:minilm-l6:big:ftjob_1")
    for event_id in ("req_7", "req_70", "req_700"):
        _void(event_id)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {UsageRecord._meta.db_table}")
    return big, small


@on_postgresql
def test_a_search_reads_the_rows_it_finds_not_the_ledger(admin_client):
    _, small = _big_ledger()
    for query, found in [
        ("?q=req_123", 1), ("?q=nosuch_id", 0), ("?q=small", 3), (f"?q={small.pk}", 3),
        ("?q=key_small", 3), ("?q=req_70", 2),  # the event and its correcting row
    ]:  # fmt: skip
        assert len(_listed(admin_client, query)) == found, query
        assert _page_reads(admin_client, query) <= 2 * found + 10, query
    # What the page ran before: a contains-search on the ids and the tenant's slug (a join),
    # which read every row for an id that matched one.
    contains = UsageRecord.objects.unscoped().filter(
        Q(event_id__icontains="req_123") | Q(tenant__slug__icontains="req_123")
        | Q(api_key_id__icontains="req_123")
    )  # fmt: skip
    assert _ledger_rows_read(*contains.order_by("-id")[:100].query.sql_with_params()) > 4000


@on_postgresql
def test_the_correction_and_fine_tune_filters_read_those_rows_not_the_ledger(admin_client):
    _big_ledger()
    corrections = _listed(admin_client, "?correction=yes")
    assert corrections == {"void_req_7", "void_req_70", "void_req_700"}
    assert _page_reads(admin_client, "?correction=yes") <= 2 * 3 + 10
    assert _listed(admin_client, "?kind__exact=fine_tune") == {f"req_{6000 + i}" for i in range(4)}
    assert _page_reads(admin_client, "?kind__exact=fine_tune") <= 2 * 4 + 10
    # Without migration metering 0009's indexes, each read every row of the ledger.
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("DROP INDEX usage_corrections, usage_not_inference")
        assert _page_reads(admin_client, "?correction=yes") > 4000
        assert _page_reads(admin_client, "?kind__exact=fine_tune") > 4000
        transaction.set_rollback(True)
