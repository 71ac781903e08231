from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from apikeys.models import ApiKey, Scope
from apikeys.services import api_key_create
from tenants.services import tenant_create


class Command(BaseCommand):
    help = "Create a tenant with an admin-scoped API key; the key's secret is the last line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--slug", default=None)
        parser.add_argument("--test", action="store_true", help="Mint an sk_test_ key.")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = tenant_create(name=options["name"], slug=options["slug"])
        created = api_key_create(
            tenant=tenant,
            name="admin (create_tenant)",
            scopes=[Scope.ADMIN],
            mode=ApiKey.Mode.TEST if options["test"] else ApiKey.Mode.LIVE,
        )
        self.stdout.write(f"tenant {tenant.id} ({tenant.slug}) created, key {created.key.id}")
        self.stdout.write(created.secret)
