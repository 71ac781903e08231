from __future__ import annotations

import factory

from apikeys.models import ApiKey
from apikeys.services import api_key_create
from tenants.models import Tenant


class TenantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tenant

    name = factory.Sequence(lambda n: f"Tenant {n}")
    slug = factory.Sequence(lambda n: f"tenant-{n}")


def make_key(tenant: Tenant, scopes: list[str] | None = None, mode: str = ApiKey.Mode.LIVE) -> str:
    """A fresh key's secret, minted the way customers get them."""
    return api_key_create(tenant=tenant, name="test", scopes=scopes or ["admin"], mode=mode).secret


def subscribe(tenant: Tenant, slug: str, **fields: object) -> object:
    """Put a tenant on a plan locally (no Stripe): what a settled subscription looks like."""
    from datetime import UTC, datetime, timedelta

    from billing.models import Subscription
    from plans.models import Plan

    now = datetime.now(UTC)
    return Subscription.objects.create(
        tenant=tenant,
        plan=Plan.objects.get(slug=slug, is_current=True),
        current_period_start=now - timedelta(days=1),
        current_period_end=now + timedelta(days=29),
        **fields,
    )
