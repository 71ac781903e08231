"""A plan change applies on the tenant's next request in every API process, not only in the
one that answered it: each process keeps its copy of a tenant's plan for a moment
(``tenants.selectors``), and a change sets a new generation on the tenant's keys, which
sends every process back to the database on their next request."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tenants import selectors

pytestmark = pytest.mark.django_db


def _other_process_holds(tenant) -> Callable[[], None]:
    """What another API process would still hold: its copy of the tenant, read just now."""
    copy = selectors.tenant_with_plan(tenant_id=tenant.pk, fresh=True)
    return lambda: selectors._cache.__setitem__(tenant.pk, (time.monotonic(), copy))


@pytest.mark.parametrize(("before", "after"), [("pro", "free"), ("free", "pro")])
def test_a_plan_change_applies_on_the_next_request_everywhere(
    tenant, client_for, stripe_api, before, after
):
    client = client_for(tenant, ["billing"])
    if before != "free":
        assert client.post("/v1/subscription", {"plan": before}, format="json").status_code == 200
    limit_before = client.get("/v1/plans").headers["RateLimit-Limit"]
    restore = _other_process_holds(tenant)
    changed = client.post("/v1/subscription", {"plan": after}, format="json")
    assert changed.status_code == 200 and changed.json()["plan"]["id"] == after
    restore()  # this process now holds the old copy too, as the other one does
    # Before, the old plan's limits (and free's 402s, or pro's fine-tunes) held for up to
    # TENANT_CONTEXT_TTL_S after the change was answered.
    limit_after = client.get("/v1/plans").headers["RateLimit-Limit"]
    assert limit_after != limit_before
    assert client.get("/v1/subscription").json()["plan"]["id"] == after
