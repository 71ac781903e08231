from prometheus_client import Counter

USAGE_EVENTS = Counter(
    "usage_events_total",
    "Usage events recorded: by the usage consumer, and fine-tunes' as their jobs succeed.",
    ["outcome"],
)
