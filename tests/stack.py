"""A stack's environment as ``make run`` would have it, for the benchmarks and the tests that
start the real processes (tests/deploy): a migrated database with a tenant on a paid plan."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from deploy.embedded_redis import start_embedded_redis

ROOT = Path(__file__).resolve().parents[1]


def stack_environment(
    work: Path,
    *,
    plan: str,
    extra: dict[str, str] | None = None,
    rate_limit_per_minute: int | None = None,
) -> tuple[dict[str, str], str, Any]:
    """The environment the stack runs in (REDIS_URL, else an embedded Redis; a fresh SQLite
    file unless BENCH_DATABASE_URL), migrated, with a tenant `bench` on ``plan`` (what is
    measured or tested is serving, not the free plan's limits) and ``extra`` variables.
    ``rate_limit_per_minute`` replaces the plan's rate limits in this database (a benchmark
    that serves more than the plan allows measures the limiter's 429s otherwise).
    Returns (env, the tenant's admin key, the embedded Redis or None)."""
    embedded = None
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        embedded, redis_url = start_embedded_redis(str(work))
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": os.environ.get("BENCH_DATABASE_URL", f"sqlite:///{work / 'db.sqlite3'}"),
        "DJANGO_SETTINGS_MODULE": "config.settings.base",
        "LOG_LEVEL": "WARNING",
        "HF_HUB_OFFLINE": "1",
        **(extra or {}),
    }
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "-v", "0"], env=env, check=True, cwd=ROOT)
    created = subprocess.run(
        [*manage, "create_tenant", "bench"], env=env, check=True, cwd=ROOT,
        capture_output=True, text=True,
    )  # fmt: skip
    # A subscription row as a settled Stripe subscription leaves it.
    subscribe = (
        "from tenants.models import Tenant; from tests.factories import subscribe; "
        f"subscribe(Tenant.objects.get(slug='bench'), {plan!r})"
    )
    if rate_limit_per_minute is not None:
        subscribe += (
            "; from plans.models import Plan; "
            f"Plan.objects.filter(slug={plan!r}).update(rate_limit_per_minute="
            f"{rate_limit_per_minute}, key_rate_limit_per_minute=None)"
        )
    subprocess.run([*manage, "shell", "-c", subscribe], env=env, check=True, cwd=ROOT,
                   capture_output=True)  # fmt: skip
    return env, created.stdout.strip().splitlines()[-1], embedded
