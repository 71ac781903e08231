from prometheus_client import Counter

USAGE_EVENTS = Counter(
    "usage_events_total", "Usage events handled by the usage consumer.", ["outcome"]
)
