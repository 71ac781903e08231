"""deploy/compose.yaml's workers hold what a worker needs, and no more (as deploy/k8s's)."""

from __future__ import annotations

from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "compose.yaml"
SECRETS = {
    "DATABASE_URL", "SECRET_KEY", "STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRETS", "METRICS_TOKEN",
}  # fmt: skip


def test_workers_hold_no_database_stripe_or_api_secret_and_the_rest_do() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for name in ("inference-worker", "training-worker"):
        env = services[name]["environment"]
        assert not SECRETS & set(env), (name, sorted(SECRETS & set(env)))
        assert env["REDIS_URL"] and env["ARTIFACT_DIR"] and env["LIVENESS_FILE"]
        assert {"WORKER_POOL", "WORKER_PRICE_PER_HOUR"} <= set(env)  # cost to serve
    for name in ("api", "usage-consumer", "platform-worker", "migrate"):
        assert {"DATABASE_URL", "SECRET_KEY"} <= set(services[name]["environment"]), name
