from __future__ import annotations

from django.db import models

from core.ids import new_id


def _tenant_id() -> str:
    return new_id("ten", 16)


class Tenant(models.Model):
    """A customer organisation. Everything a customer owns points at one of these."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"

    id = models.CharField(primary_key=True, max_length=32, default=_tenant_id, editable=False)
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.slug})"

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE
