from __future__ import annotations

from django.db import models

from core.scoping import TenantScopedManager


class Scope(models.TextChoices):
    INFERENCE = "inference", "Inference"
    TRAINING = "training", "Training"
    BILLING = "billing", "Billing"
    ADMIN = "admin", "Admin"


ALL_SCOPES = frozenset(Scope.values)


class ApiKey(models.Model):
    """A secret a tenant's code authenticates with. Only SHA-256 hashes of secrets are kept:
    the secret itself is shown once, at creation or rotation."""

    class Mode(models.TextChoices):
        LIVE = "live", "Live"
        TEST = "test", "Test"

    id = models.CharField(primary_key=True, max_length=32, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=200, blank=True, default="")
    mode = models.CharField(max_length=4, choices=Mode.choices, default=Mode.LIVE)
    scopes = models.JSONField(default=list)
    secret_hash = models.CharField(max_length=64, unique=True)
    # After a rotation with a grace period the previous secret keeps working until then.
    previous_secret_hash = models.CharField(max_length=64, null=True, blank=True, unique=True)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = TenantScopedManager()

    class Meta:
        indexes = [models.Index(fields=["tenant", "-created_at"], name="apikey_tenant_created")]

    def __str__(self) -> str:
        return f"{self.id} ({self.name})"

    @property
    def prefix(self) -> str:
        """What a human sees of the secret in listings: ``sk_live_<public id>``."""
        return f"sk_{self.mode}_{self.id.removeprefix('key_')}"

    @property
    def livemode(self) -> bool:
        return self.mode == self.Mode.LIVE

    @property
    def scope_list(self) -> list[str]:
        """The key's scopes, as a list of known scopes. The column is JSON: a value of any
        other shape (a hand edit, an old admin form) grants nothing.

        WARNING: never test membership on ``scopes`` itself: ``"admin" in "xxadminxx"`` is
        a substring match, and would make such a key an admin key."""
        if not isinstance(self.scopes, list):
            return []
        return [scope for scope in self.scopes if isinstance(scope, str) and scope in ALL_SCOPES]

    def has_scope(self, scope: str) -> bool:
        scopes = self.scope_list
        return Scope.ADMIN in scopes or scope in scopes
