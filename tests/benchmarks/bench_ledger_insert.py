"""The usage consumer's insert rate into a large ledger on its index set before migration
metering 0010 (with the redundant indexes) and after, side by side in one run (figures
printed, never asserted). PostgreSQL only:

    BENCH_POSTGRES=postgres://postgres@127.0.0.1:5432 .venv/bin/python \\
        tests/benchmarks/bench_ledger_insert.py [--rows 2500000] [--rounds 2] [--keep]

Creates the database ``bench_ledger`` on that server, migrates it, fills the ledger with
``--rows`` rows spread over the last 120 days and 20 tenants in one ``generate_series``
(through the event-id trigger, as the consumer's rows go), copies it to ``bench_ledger_old``
and migrates that one back to 0009 (the dropped indexes built again, online): the same rows
on the two index sets. Then ``--rounds`` times, on each database in turn (ABBA order), stores
``--batches`` batches of 500 new events dated now through ``usage_record_bulk``, the service
the usage consumer calls (rollups included), and prints the events/s of the service and of
its ledger INSERT statements alone; then the index sizes and how long the migration back
took. Both databases are dropped at the end unless --keep.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "platform")]

DATABASE = "bench_ledger"
OLD = f"{DATABASE}_old"  # the same rows on the index set before 0010
BATCH = 500  # the consumer's batch (batches of up to 500 stream entries)
TENANTS = 20
BEFORE, AFTER = "0009_ledger_admin_indexes", "0010_ledger_redundant_indexes"

FILL = """
INSERT INTO metering_usagerecord (event_id, kind, tenant_id, api_key_id, livemode, model,
    inputs, tokens, compute_ms, cached, worker, cost_micros, pool, plan_id, occurred_at,
    recorded_at, corrects, reason, corrected_by)
SELECT 'req_' || substr(md5(g::text || %(seed)s), 1, 24),
    CASE WHEN g %% 1000 = 0 THEN 'fine_tune' ELSE 'inference' END,
    t.id, 'key_' || substr(md5(t.id), 1, 20), g %% 10 <> 0, 'minilm-l6',
    1 + g %% 8, 20 + g %% 300, 2.5, (g %% 5 = 0)::int, 'w1', 12.5, 'cpu', t.plan,
    at, at, '', '', ''
FROM generate_series(%(first)s, %(last)s) AS g
CROSS JOIN LATERAL (SELECT now() - (g %% 10368000) * interval '1 second' AS at) AS moment
JOIN (SELECT row_number() OVER (ORDER BY id) - 1 AS n, id, %(plan)s AS plan
      FROM tenants_tenant) AS t ON t.n = g %% %(tenants)s
"""


def server_run(server: str, statement: str) -> None:
    import psycopg

    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(statement)


def index_sizes() -> tuple[int, int]:
    """Bytes of the ledger's indexes (every partition's) and of the event ids table's."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT COALESCE(SUM(pg_relation_size(i.indexrelid)), 0) FROM pg_index i"
            " WHERE i.indrelid IN (SELECT relid FROM pg_partition_tree('metering_usagerecord'))"
        )
        ledger = int(cursor.fetchone()[0])
        cursor.execute("SELECT pg_indexes_size('metering_ledgereventid')")
        return ledger, int(cursor.fetchone()[0])


def migrate_to(name: str) -> float:
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    began = time.perf_counter()
    MigrationExecutor(connection).migrate([("metering", name)])
    with connection.cursor() as cursor:
        cursor.execute("CHECKPOINT")  # (the rebuilt indexes' writes not left to a round)
    return time.perf_counter() - began


def events(tenants: list[str], count: int) -> list[dict[str, Any]]:
    from core.ids import new_id

    now = datetime.now(UTC).isoformat()
    fixed = {
        "v": 1, "kind": "inference", "livemode": True, "model": "minilm-l6", "inputs": 1,
        "tokens": 42, "compute_ms": 2.5, "cached": 0, "occurred_at": now, "worker": "w1",
    }  # fmt: skip
    return [
        {
            **fixed,
            "event_id": new_id("req"),
            "tenant_id": tenants[n % len(tenants)],
            "api_key_id": f"key_{n % 40}",
        }
        for n in range(count)
    ]


def insert_rate(tenants: list[str], batches: int) -> tuple[float, float]:
    """Events/s stored through the consumer's service, ``batches`` batches of ``BATCH``: the
    whole service, and its ledger INSERT statements alone (the part the indexes weigh on)."""
    from django.db import connection

    from metering.services import usage_record_bulk

    usage_record_bulk(events=events(tenants, BATCH))  # (warm-up)
    prepared = [events(tenants, BATCH) for _ in range(batches)]
    in_insert = 0.0

    def timed(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        nonlocal in_insert
        began = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            if sql.startswith('INSERT INTO "metering_usagerecord"'):
                in_insert += time.perf_counter() - began

    began = time.perf_counter()
    with connection.execute_wrapper(timed):
        for batch in prepared:
            assert usage_record_bulk(events=batch).inserted == BATCH
    elapsed = time.perf_counter() - began
    return batches * BATCH / elapsed, batches * BATCH / in_insert


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--keep", action="store_true", help="leave the database behind")
    args = parser.parse_args()
    server = os.environ.get("BENCH_POSTGRES", "postgres://postgres@127.0.0.1:5432").rstrip("/")
    for name in (DATABASE, OLD):
        server_run(server, f"DROP DATABASE IF EXISTS {name}")
    server_run(server, f"CREATE DATABASE {DATABASE}")
    os.environ["DATABASE_URL"] = f"{server}/{DATABASE}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")
    try:
        run(args, server)
    finally:
        from django.db import connections

        connections.close_all()
        if not args.keep:
            for name in (DATABASE, OLD):
                server_run(server, f"DROP DATABASE IF EXISTS {name}")


def use(name: str) -> None:
    """The database the default connection (every service's) talks to from now on."""
    from django.db import connections

    connections["default"].close()
    connections["default"].settings_dict["NAME"] = name
    connections["default"].ensure_connection()


def run(args: argparse.Namespace, server: str) -> None:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from tenants.services import tenant_create
    from tests.factories import subscribe

    call_command("migrate", verbosity=0)
    tenants = []
    for n in range(TENANTS):
        tenant = tenant_create(name=f"bench-ledger-{n}")
        subscribe(tenant, "pro")
        tenants.append(str(tenant.pk))
    began = time.perf_counter()
    with connection.cursor() as cursor:
        step = 500_000
        for first in range(0, args.rows, step):
            last = min(first + step, args.rows) - 1
            params = {"first": first, "last": last, "seed": "", "tenants": TENANTS}
            cursor.execute(FILL, {**params, "plan": "pro@1"})
        cursor.execute("VACUUM ANALYZE metering_usagerecord")
        cursor.execute("VACUUM ANALYZE metering_ledgereventid")
        cursor.execute("SELECT pg_database_size(current_database())")
        size = cursor.fetchone()[0]
    print(
        f"ledger filled: {args.rows:,} rows over 120 days, {TENANTS} tenants, in "
        f"{time.perf_counter() - began:.0f} s; database {size / 2**30:.2f} GiB"
    )
    connection.close()
    server_run(server, f"CREATE DATABASE {OLD} TEMPLATE {DATABASE}")
    sizes = {"0010 (after)": index_sizes()}
    use(OLD)
    back = migrate_to(BEFORE)
    sizes["0009 (before)"] = index_sizes()
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    rates: dict[str, list[tuple[float, float]]] = {"0010 (after)": [], "0009 (before)": []}
    order = [("0010 (after)", DATABASE), ("0009 (before)", OLD)]
    for round_ in range(args.rounds):
        for name, database in order if round_ % 2 == 0 else order[::-1]:
            use(database)
            rates[name].append(insert_rate(tenants, args.batches))
    events_each = args.batches * BATCH
    print(f"insert rate, {events_each:,} events a measurement in batches of {BATCH}:")
    medians = {}
    for part, what in enumerate(["usage_record_bulk", "its ledger INSERT statements alone"]):
        print(f"  {what}:")
        for name, measured in rates.items():
            medians[name] = statistics.median(rate[part] for rate in measured)
            each = ", ".join(f"{rate[part]:,.0f}" for rate in measured)
            print(f"    {name}: median {medians[name]:,.0f} events/s ({each})")
        print(f"    after / before: {medians['0010 (after)'] / medians['0009 (before)']:.2f}x")
    for name, (ledger, event_ids) in sizes.items():
        print(
            f"index size {name}: ledger {ledger / 2**20:,.0f} MiB,"
            f" event ids table {event_ids / 2**20:,.0f} MiB"
        )
    print(f"migrate back to 0009 (indexes built online): {back:.1f} s")


if __name__ == "__main__":
    main()
