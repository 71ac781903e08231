import getpass
from typing import Any

import redis
from django.core.management.base import BaseCommand, CommandError, CommandParser

from metering.corrections import VoidRefused, tenant_in_stripe, usage_record_void


class Command(BaseCommand):
    help = (
        "Void a metered event (an answered classification, a fine-tune) by its event id: append"
        " one correcting row to the ledger that negates its billable usage in its own billing"
        " period (refused once the period is invoiced: credit the customer in Stripe then)."
        " Prints the correcting row's id."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("event_id", help="the event's id: a request id (req_…) or a job id")
        parser.add_argument("--reason", required=True, help="why: kept on the correcting row")
        parser.add_argument(
            "--by", default="", help="who voids it (kept on the row; default: this OS user)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        actor = options["by"] or _os_user()
        try:
            correction = usage_record_void(
                event_id=options["event_id"], reason=options["reason"], actor=actor
            )
        except VoidRefused as exc:
            raise CommandError(str(exc)) from exc
        except redis.RedisError as exc:
            # (checked before the row is written: nothing was changed)
            raise CommandError(
                f"Nothing was changed: Redis cannot be reached ({exc}). Try again once it is."
            ) from exc
        self.stdout.write(str(correction.pk))
        billed = tenant_in_stripe(correction.tenant)
        self.stderr.write(
            f"{options['event_id']} voided by correcting row {correction.pk}"
            f" ({correction.event_id}): {-correction.inputs} inputs, {-correction.tokens} tokens"
            " taken off its period"
            + (
                "; a usage push of its period is queued: Stripe gets the difference as a credit"
                " item."
                if billed
                else "."
            )
        )


def _os_user() -> str:
    """Who ran the command, as the OS says (an image's one user names nobody: say --by)."""
    try:
        return f"{getpass.getuser()} (manage.py)"
    except (KeyError, OSError):  # a uid without a passwd entry
        return "manage.py"
