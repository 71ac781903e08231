"""The margins pages and the pricing simulator at 1,000 tenants (figures printed, never
asserted), on a PostgreSQL database of its own that ``seed`` fills with rollups alone (the
pages read the rollups and the billing tables, never the ledger):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/scale_margins \\
        .venv/bin/python manage.py migrate && .venv/bin/python manage.py seed
    DATABASE_URL=... .venv/bin/python tests/benchmarks/bench_margins.py seed
    DATABASE_URL=... .venv/bin/python tests/benchmarks/bench_margins.py time
    DATABASE_URL=... .venv/bin/python tests/benchmarks/bench_margins.py figures OUT

``seed``: 1,000 tenants on free, pro and scale (some moving plans mid-month), three months
(January to March 2026) of daily rollups on four models (an int8 one and fine-tuned ones,
fine-tuning jobs too), live and test mode, one to four API keys each; a third of the paid
tenants with billing periods recorded, anchored on an odd day at a time of day, their plan
spans, and a move to free that cuts a period short. ``time``: each margins view and the
simulator through the admin (the test client, a superuser), in a fresh process's first
and second request. ``figures``: every page's figures and the simulator's report over
several ranges, written to OUT to compare two versions of the code byte for byte.
``BENCH_ROOT=<another worktree>`` imports that checkout's code (the code before)."""

from __future__ import annotations

import os
import random
import sys
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

# The checkout whose code is imported: BENCH_ROOT (another worktree, the code before), else
# this one.
ROOT = Path(os.environ.get("BENCH_ROOT") or Path(__file__).resolve().parents[2]).resolve()
sys.path.insert(0, str(ROOT / "platform"))
sys.path.insert(1, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402

JAN, APR = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)
PLANS = ("free@1", "pro@1", "scale@1")
PRICES = (
    '{"pro": {"base_fee": 3900, "included_inputs": 50000}, "scale": {"overage_tiers": '
    '{"standard": [{"up_to": null, "unit_amount": "18"}], "int8": [{"up_to": null, '
    '"unit_amount": "9"}]}, "finetune_unit_amount": "0.25"}}'
)
RANGES = [("2026-01-01", "2026-04-01"), ("2026-02-01", "2026-03-01"),
          ("2026-01-17", "2026-03-04"), ("2026-03-09", "2026-03-10")]  # fmt: skip
COLUMNS = ("day", "tenant_id", "model", "kind", "livemode", "plan_id", "api_key_id", "requests",
           "inputs", "cached", "tokens", "compute_ms", "cost_micros", "last_at")  # fmt: skip


def _at(day: date, rng: random.Random) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(
        seconds=rng.randrange(86_400), microseconds=rng.randrange(1_000_000)
    )


def _add_month(moment: datetime, n: int = 1) -> datetime:
    month = moment.month - 1 + n
    return moment.replace(year=moment.year + month // 12, month=month % 12 + 1)


def _billing(tenant_id: str, plan: str, change: tuple[datetime, str] | None,
             rng: random.Random) -> tuple[list[tuple], list[tuple]]:  # fmt: skip
    """Monthly periods anchored on an odd day at a time of day, from December to April, and
    plan spans; a move to free cuts its period short (scheduled_end), free's months follow."""
    anchor = datetime(2025, 12, rng.randrange(3, 29, 2), rng.randrange(24), rng.randrange(60),
                      tzinfo=UTC)  # fmt: skip
    periods, spans = [], [(tenant_id, plan, anchor)]
    start = anchor
    while start < APR:
        end = _add_month(start)
        on = plan if change is None or change[0] >= end else change[1]
        if change and start < change[0] < end and change[1] == "free@1":
            periods.append((tenant_id, start, change[0], end, plan))
            free_start = change[0]
            while free_start < APR:  # to the next 1st, then calendar months
                following = _add_month(free_start.replace(day=1, hour=0, minute=0, second=0,
                                                          microsecond=0))  # fmt: skip
                periods.append((tenant_id, free_start, following, None, "free@1"))
                free_start = following
            break
        periods.append((tenant_id, start, end, None, on))
        start = end
    if change:
        spans.append((tenant_id, change[1], change[0]))
    return periods, spans


def seed() -> None:
    from billing.models import BillingPeriod, PlanSpan
    from economics.models import UsageRollup
    from tenants.models import Tenant

    rng = random.Random(0)
    Tenant.objects.bulk_create(
        [Tenant(id=f"tn_scale{i:04d}", slug=f"scale-{i:04d}", name=f"Tenant {i:04d}")
         for i in range(1000)], ignore_conflicts=True)  # fmt: skip
    UsageRollup.objects.unscoped().all().delete()
    BillingPeriod.objects.unscoped().all().delete()
    PlanSpan.objects.unscoped().all().delete()
    rows, periods, spans = [], [], []
    days = [JAN.date() + timedelta(days=d) for d in range(90)]
    for i in range(1000):
        tenant_id = f"tn_scale{i:04d}"
        plan = rng.choices(PLANS, weights=(50, 35, 15))[0]
        paid = plan != "free@1"
        change = None
        if paid and rng.random() < 0.3:
            other = rng.choice([p for p in PLANS if p != plan])
            change = (_at(rng.choice(days[10:80]), rng), other)
        if paid and rng.random() < 0.35:
            p, s = _billing(tenant_id, plan, change, rng)
            periods += p
            spans += s
        keys = [f"key_{i:04d}_{k}" for k in range(rng.randint(1, 4))]
        models = ["minilm-l6", "minilm-l6-int8"]
        if paid:
            models += [f"ft:minilm-l6:t{i}:a1", f"ft:minilm-l6-int8:t{i}:b2"]
        monthly = {"free@1": 9_000, "pro@1": 400_000, "scale@1": 4_000_000}[plan]
        monthly = int(monthly * rng.uniform(0.2, 2.0))
        for day in days:
            on_day = [(plan, None)]
            if change and change[0].date() < day:
                on_day = [(change[1], None)]
            elif change and change[0].date() == day:
                on_day = [(plan, change[0]), (change[1], None)]
            for plan_id, until in on_day:
                for model in models:
                    if rng.random() < 0.35:
                        continue
                    for key in keys:
                        if rng.random() < 0.3:
                            continue
                        inputs = int(monthly / 30 / len(keys) / 2 * rng.uniform(0.3, 1.7))
                        last = _at(day, rng) if until is None else until - timedelta(seconds=1)
                        if day.month == 1 and rng.random() < 0.1:
                            last = None  # from before last_at was kept
                        rows.append((day, tenant_id, model, "inference", True, plan_id, key,
                                     max(inputs // rng.randint(1, 8), 1), inputs,
                                     int(inputs * rng.uniform(0, 0.2)), inputs * 40,
                                     inputs * 3.5, Decimal(inputs * 37) / 10_000,
                                     last))  # fmt: skip
                if paid and plan_id != "free@1" and rng.random() < 0.04:
                    tokens = rng.randint(50_000, 2_000_000)
                    rows.append((day, tenant_id, models[2 + rng.randrange(2)], "fine_tune",
                                 True, plan_id, keys[0], 1, 0, 0, tokens, tokens * 0.02,
                                 Decimal(tokens) / 100, _at(day, rng)))  # fmt: skip
            if rng.random() < 0.15:
                rows.append((day, tenant_id, "minilm-l6", "inference", False, on_day[-1][0],
                             keys[-1], 5, 50, 0, 2000, 175.0, Decimal("1.8500"),
                             _at(day, rng)))  # fmt: skip
    with connection.cursor() as cursor:
        raw = cursor.cursor
        with raw.copy(f"COPY economics_usagerollup ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        with raw.copy("COPY billing_billingperiod (tenant_id, start, \"end\", scheduled_end, "
                      "plan_id) FROM STDIN") as copy:  # fmt: skip
            for row in periods:
                copy.write_row(row)
        with raw.copy("COPY billing_planspan (tenant_id, plan_id, start) FROM STDIN") as copy:
            for row in spans:
                copy.write_row(row)
        cursor.execute("ANALYZE")
    print(f"seeded {len(rows):,} rollups, {len(periods):,} billing periods, {len(spans):,} "
          f"plan spans, 1,000 tenants")  # fmt: skip


def _client():  # type: ignore[no-untyped-def]
    from django.contrib.auth import get_user_model
    from django.test import Client

    user, _ = get_user_model().objects.get_or_create(
        username="bench-margins", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client()
    client.force_login(user)
    return client


def _views() -> list[tuple[str, str, dict[str, str] | None]]:
    base = "/admin/economics/usagerollup/"
    start, end = RANGES[0]
    views: list[tuple[str, str, dict[str, str] | None]] = [
        (f"margins by {by}", f"{base}margins/?start={start}&end={end}&by={by}", None)
        for by in ("tenant", "model", "plan", "day")
    ]
    views.append(("simulator", f"{base}simulate/",
                  {"start": start, "end": end, "prices": PRICES}))  # fmt: skip
    return views


def timings() -> None:
    import economics.selectors

    print(f"code: {economics.selectors.__file__}")
    client = _client()
    for name, url, post in _views():
        seconds = []
        for _ in range(2):
            began = time.perf_counter()
            response = client.post(url, post) if post else client.get(url)
            seconds.append(time.perf_counter() - began)
            assert response.status_code == 200, response.status_code
        print(f"{name:18} {seconds[0]:6.2f} s, again {seconds[1]:6.2f} s")


def figures(out: str) -> None:
    import economics.selectors
    from economics.selectors import margin_totals, margins
    from economics.simulation import day_parse, prices_parse, simulation_report

    print(f"code: {economics.selectors.__file__}")
    with open(out, "w") as f:
        for start, end in RANGES:
            lo, hi = day_parse(start), day_parse(end)
            for by in ("tenant", "model", "plan", "day"):
                lines = margins(start=lo, end=hi, by=by)
                f.write(f"margins {start} {end} {by}\n{lines!r}\n{margin_totals(lines)!r}\n")
            report = simulation_report(start=lo, end=hi, proposed=prices_parse(PRICES))
            f.write(f"simulate {start} {end}\n{report}\n")
        client = _client()
        for name, url, post in _views():
            response = client.post(url, post) if post else client.get(url)
            # (The CSRF token, in every admin page's logout form, differs on each.)
            lines = response.content.decode().splitlines()
            body = "\n".join(line for line in lines if "csrfmiddlewaretoken" not in line)
            f.write(f"page {name}\n{body}\n")


if __name__ == "__main__":
    {"seed": seed, "time": timings}.get(sys.argv[1], lambda: figures(sys.argv[2]))()
