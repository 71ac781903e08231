"""deploy/k8s: the NetworkPolicies fence each Deployment as its process needs (workers reach
Redis and DNS only, so that a worker, which runs tenants' data, cannot reach the database or
Stripe; the others take traffic on the port they serve), and KEDA's Redis scaler
authenticates with REDIS_URL's own password."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from tests.deploy.test_manifests import _k8s_documents

WORKERS = {"margin-inference-worker", "margin-training-worker"}


def _kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in _k8s_documents() if d["kind"] == kind]


def _selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    selector = policy["spec"]["podSelector"]
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def _secret() -> dict[str, Any]:
    return next(d for d in _k8s_documents() if d["kind"] == "Secret")


def _redis_url() -> Any:
    return urlsplit(_secret()["stringData"]["REDIS_URL"])


def _served_ports(pod: dict[str, Any]) -> set[int]:
    """The ports a pod's container listens on: declared ones, and METRICS_PORT's."""
    container = pod["containers"][0]
    ports = {p["containerPort"] for p in container.get("ports", [])}
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    if env.get("METRICS_PORT"):
        ports.add(int(env["METRICS_PORT"]))
    return ports


def test_each_deployment_takes_traffic_only_on_the_ports_it_serves() -> None:
    policies = _kind("NetworkPolicy")
    for deployment in _kind("Deployment"):
        name = deployment["metadata"]["name"]
        template = deployment["spec"]["template"]
        mine = [p for p in policies if _selects(p, template["metadata"]["labels"])]
        assert len(mine) == 1, (name, [p["metadata"]["name"] for p in mine])
        spec = mine[0]["spec"]
        assert "Ingress" in spec["policyTypes"], name
        allowed = {port["port"] for rule in spec["ingress"] for port in rule["ports"]}
        assert allowed == _served_ports(template["spec"]), name
        assert all(set(rule) == {"ports"} for rule in spec["ingress"]), name  # from anyone
        if name in WORKERS:
            assert allowed == set(), name  # a worker serves nothing


def test_workers_reach_only_dns_and_the_redis_of_redis_url() -> None:
    redis_url = _redis_url()
    for policy in _kind("NetworkPolicy"):
        names = {
            d["metadata"]["name"]
            for d in _kind("Deployment")
            if _selects(policy, d["spec"]["template"]["metadata"]["labels"])
        }
        if not names & WORKERS:
            assert "Egress" not in policy["spec"]["policyTypes"], policy["metadata"]["name"]
            continue
        assert names == WORKERS and "Egress" in policy["spec"]["policyTypes"]
        reached = {
            (port["protocol"], port["port"])
            for rule in policy["spec"]["egress"]
            for port in rule["ports"]
        }
        assert reached == {("UDP", 53), ("TCP", 53), ("TCP", redis_url.port)}
        # Not the database's port (nor Stripe's HTTPS).
        assert ("TCP", 5432) not in reached and ("TCP", 443) not in reached


def test_kedas_redis_scaler_authenticates_with_the_password_of_redis_url() -> None:
    scaled = _kind("ScaledObject")[0]
    trigger = next(t for t in scaled["spec"]["triggers"] if t["type"] == "redis")
    (auth,) = _kind("TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    (ref,) = auth["spec"]["secretTargetRef"]
    secret = _secret()
    assert (ref["parameter"], ref["name"]) == ("password", secret["metadata"]["name"])
    assert secret["stringData"][ref["key"]] == _redis_url().password
