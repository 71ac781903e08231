from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.utils.text import slugify

from apikeys.models import ApiKey, Scope
from apikeys.services import api_key_create
from core.errors import APIError
from tenants.selectors import tenant_name_taken
from tenants.services import DERIVED_SLUG_LENGTH, tenant_create


class Command(BaseCommand):
    help = (
        "Create a tenant with an admin-scoped API key; the key's secret is the last line of "
        "stdout. A --slug is used as given or refused; without one the slug is derived from "
        "the name (with a random suffix when that one is taken, said on stderr)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument(
            "--slug", default=None, help="Lowercase letters, digits, hyphens, underscores."
        )
        parser.add_argument("--test", action="store_true", help="Mint an sk_test_ key.")

    def handle(self, *args: Any, **options: Any) -> None:
        name: str = options["name"]
        slug: str | None = options["slug"]
        duplicate = tenant_name_taken(name=name.strip())
        try:
            with transaction.atomic():  # no tenant without its first key
                tenant = tenant_create(name=name, slug=slug)
                created = api_key_create(
                    tenant=tenant,
                    name="admin (create_tenant)",
                    scopes=[Scope.ADMIN],
                    mode=ApiKey.Mode.TEST if options["test"] else ApiKey.Mode.LIVE,
                )
        except APIError as error:
            raise CommandError(error.message) from None
        if duplicate:
            self.stderr.write(
                f"warning: another tenant is already named {tenant.name!r}; "
                f"this one is {tenant.id} ({tenant.slug})"
            )
        plain = slugify(tenant.name)
        if slug is None and tenant.slug != plain:
            if not plain:
                why = "the name has no letters or digits a slug can use"
            elif len(plain) > DERIVED_SLUG_LENGTH:
                why = f"'{plain}' is longer than {DERIVED_SLUG_LENGTH} characters"
            else:
                why = f"'{plain}' is taken"
            self.stderr.write(f"note: the slug is '{tenant.slug}': {why} (--slug sets one)")
        self.stdout.write(f"tenant {tenant.id} ({tenant.slug}) created, key {created.key.id}")
        self.stdout.write(created.secret)
