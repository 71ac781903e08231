from prometheus_client import Counter

USAGE_EVENTS = Counter(
    "usage_events_total",
    "Usage events recorded: by the usage consumer, and fine-tunes' as their jobs succeed.",
    ["outcome"],
)
USAGE_PAST_BILLING = Counter(
    "usage_events_past_billing_total",
    "Live usage stored after its billing period's late pushes ended (LATE_USAGE_HORIZON):"
    " in the ledger and usage reports, never pushed to Stripe nor reconciled.",
)
