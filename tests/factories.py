from __future__ import annotations

from typing import Any

import factory
from rest_framework.test import APIClient

from apikeys.models import ApiKey
from apikeys.services import api_key_create, hash_secret
from tenants.models import Tenant


class TenantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tenant

    name = factory.Sequence(lambda n: f"Tenant {n}")
    slug = factory.Sequence(lambda n: f"tenant-{n}")


def make_key(tenant: Tenant, scopes: list[str] | None = None, mode: str = ApiKey.Mode.LIVE) -> str:
    """A fresh key's secret, minted the way customers get them."""
    return api_key_create(tenant=tenant, name="test", scopes=scopes or ["admin"], mode=mode).secret


def bearer(secret: str) -> APIClient:
    """A client that sends ``secret`` as its API key."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def key_id_of(secret: str) -> str:
    """The id of the key a secret belongs to."""
    return ApiKey.objects.unscoped().get(secret_hash=hash_secret(secret)).pk


def subscribe(tenant: Tenant, slug: str, **fields: object) -> object:
    """Put a tenant on a plan locally (no Stripe): what a settled subscription looks like."""
    from datetime import UTC, datetime, timedelta

    from billing.models import Subscription
    from plans.models import Plan

    now = datetime.now(UTC)
    return Subscription.objects.create(
        tenant=tenant,
        plan=Plan.objects.get(slug=slug, is_current=True),
        **{
            "current_period_start": now - timedelta(days=1),
            "current_period_end": now + timedelta(days=29),
            **fields,
        },
    )


def staff_client(*permissions: str, superuser: bool = False) -> Any:
    """A Django test client logged in as a new staff user with only these ``app.codename``
    rights (or every right, as a superuser)."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission
    from django.test import Client

    model = get_user_model()
    user = model.objects.create_user(
        username=f"staff-{model.objects.count()}", password="x", is_staff=True,
        is_superuser=superuser,
    )  # fmt: skip
    for permission in permissions:
        app_label, codename = permission.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    client = Client()
    client.force_login(user)
    return client


def ledger_row(**fields: Any) -> Any:
    """A ledger row stored as the usage consumer stores one: stamped with the tenant's plan
    now unless it names one, and its day's rollup updated in the same transaction (reports
    and rating read whole days from the rollups: ``metering.sums``)."""
    from dataclasses import fields as dataclass_fields

    from django.db import transaction

    from economics.services import rollup_apply, tenant_plans_now
    from metering.models import UsageRecord
    from metering.services import LedgerRow

    with transaction.atomic():
        record = UsageRecord.objects.create(**fields)
        if not record.plan_id:
            record.plan_id = tenant_plans_now({record.tenant_id})[record.tenant_id]
            record.save(update_fields=["plan_id"])
        names = [f.name for f in dataclass_fields(LedgerRow)]
        rollup_apply(rows=[LedgerRow(**{name: getattr(record, name) for name in names})])
    return record


def rollups_unkeyed(*, tenant: Tenant, before: Any) -> None:
    """The tenant's rollups of the days before ``before`` (a date) as they were before the
    API key joined the rollups' grain (economics 0004): one row per day, model, kind, mode
    and plan, holding every key's usage, its key unknown (""). This process then no longer
    takes the tenant for one without such rows (``metering.sums``), as a process started
    after the upgrade would not."""
    from django.db import transaction
    from django.db.models import Max, Sum

    from economics.models import UsageRollup
    from economics.selectors import UNKEYED_GRAIN
    from metering import sums

    summed = ("requests", "inputs", "cached", "tokens", "compute_ms", "cost_micros")
    with transaction.atomic():
        rows = UsageRollup.objects.for_tenant(tenant).filter(day__lt=before)
        merged = list(
            rows.values(*UNKEYED_GRAIN).annotate(
                **{f"sum_{name}": Sum(name) for name in summed}, latest=Max("last_at")
            )
        )
        rows.delete()
        UsageRollup.objects.bulk_create(
            UsageRollup(
                api_key_id="",
                last_at=group["latest"],
                **{name: group[name] for name in UNKEYED_GRAIN},
                **{name: group[f"sum_{name}"] for name in summed},
            )
            for group in merged
        )
    sums._KEYED.discard(str(tenant.pk))
