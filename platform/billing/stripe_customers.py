"""The Stripe customer behind a tenant's subscription, made on demand."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from tenants.models import Tenant

from .models import Subscription
from .stripe_client import as_dict


def customer_ensure(api: Any, sub: Subscription, tenant: Tenant) -> str:
    if sub.stripe_customer_id:
        return sub.stripe_customer_id
    customer = api.Customer.create(
        name=tenant.name,
        metadata={"tenant_id": tenant.id},
        idempotency_key=f"customer-{tenant.id}",
    )
    # Stored at once, on its own: a failure further on must not orphan the customer.
    Subscription.objects.for_tenant(tenant).update(stripe_customer_id=customer.id)
    sub.stripe_customer_id = customer.id
    return str(customer.id)


def payment_method_ensure(api: Any, customer_id: str) -> None:
    customer = as_dict(api.Customer.retrieve(customer_id))
    if (customer.get("invoice_settings") or {}).get("default_payment_method"):
        return
    method = api.PaymentMethod.attach(settings.STRIPE_DEFAULT_PAYMENT_METHOD, customer=customer_id)
    api.Customer.modify(customer_id, invoice_settings={"default_payment_method": method.id})
