from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Q

from apikeys.models import ApiKey, Scope
from apikeys.services import api_key_create
from core.errors import APIError
from tenants.models import Tenant


class Command(BaseCommand):
    help = (
        "Mint an API key for an existing tenant (by slug or id): the way back for a tenant "
        "whose admin keys were all revoked or have expired. The secret is the last line of "
        "stdout."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("tenant", help="The tenant's slug or id (ten_...).")
        parser.add_argument(
            "--scopes",
            default=Scope.ADMIN.value,
            help="Comma-separated, of inference, training, billing, admin (default: admin).",
        )
        parser.add_argument("--name", default="operator (create_api_key)")
        parser.add_argument("--test", action="store_true", help="Mint an sk_test_ key.")

    def handle(self, *args: Any, **options: Any) -> None:
        wanted = options["tenant"].strip()
        tenant = Tenant.objects.filter(Q(slug=wanted) | Q(pk=wanted)).first()
        if tenant is None:
            raise CommandError(f"No tenant with the slug or id {wanted!r}.")
        scopes = [scope.strip() for scope in options["scopes"].split(",") if scope.strip()]
        unknown = sorted(set(scopes) - set(Scope.values))
        if unknown:
            raise CommandError(
                f"Unknown scopes: {', '.join(unknown)} (choose from {', '.join(Scope.values)})."
            )
        limit = ApiKey._meta.get_field("name").max_length or 0
        if len(options["name"]) > limit:
            raise CommandError(f"A key's name is at most {limit} characters.")
        try:
            created = api_key_create(
                tenant=tenant,
                name=options["name"],
                scopes=scopes,
                mode=ApiKey.Mode.TEST if options["test"] else ApiKey.Mode.LIVE,
            )
        except APIError as error:
            raise CommandError(error.message) from None
        if tenant.status != Tenant.Status.ACTIVE:
            self.stderr.write(f"warning: {tenant.slug} is {tenant.status}: its keys are refused")
        self.stdout.write(f"key {created.key.id} created for {tenant.id} ({tenant.slug})")
        self.stdout.write(created.secret)
