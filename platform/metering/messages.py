"""Messages operators see when a ledger correction is refused (``metering.corrections``)."""

NO_REASON = "Say why the event is voided (--reason): the correcting row keeps it."
ACTOR_TOO_LONG = (
    "Who voids it (--by) is at most {limit} characters, got {length}: the correcting row "
    "keeps it whole or not at all."
)
UNKNOWN_EVENT = "No usage record has event id {event_id!r}."
IS_CORRECTION = (
    "{event_id!r} is a correcting row (it voids {corrects!r}): a correction is never voided."
)
TEST_MODE = "{event_id!r} is test-mode usage, which is never billed: there is nothing to correct."
UNBILLED = (
    "{event_id!r} is the compute of a fine-tune that did not succeed, a cost that is never "
    "billed: there is nothing to correct."
)
ALREADY_VOIDED = "{event_id!r} is voided already (correcting row {void_id!r}): nothing was changed."
PERIOD_CLOSED = (
    "{event_id!r} is in a billing period that is closed ({start:%Y-%m-%d %H:%M:%S} to "
    "{end:%Y-%m-%d %H:%M:%S} UTC: invoiced, or ended more than {days} days ago). Its usage is "
    "billed as it stands{advice}"
)
CREDIT_IN_STRIPE = (
    ": credit the customer in Stripe instead (a credit note on the period's invoice)."
)
NOTHING_IN_STRIPE = " (the tenant has nothing in Stripe: none of it was charged)."
CHANGE_IN_PROGRESS = (
    "{event_id!r} was not voided: a plan change of its tenant has been running for 30 s (a "
    "move to free invoices the period it voids in). Nothing was changed: try again."
)
