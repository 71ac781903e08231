"""Messages operators see on the margins page, the pricing simulator and its command."""

DATE_FORMAT = "Enter a date, ISO 8601 (2026-11-01): {problem}"
NOT_A_WHOLE_DAY = (
    "{value!r} is not a whole UTC day: margins read daily UTC rollups, so a range runs from "
    "one UTC midnight to another. Enter a date (2026-11-01), or a time at 00:00 UTC."
)
OUT_OF_CALENDAR = "{value!r} falls outside the years 0001 to 9999 once converted to UTC."
RANGE_BACKWARDS = "start must be before end."
# ISO dates: strftime's %Y writes year 1 as "1".
RANGE_TOO_LONG = "A range may span at most {years} years ({start} to {end})."
PRICES_NOT_JSON = "The price table is not JSON: {problem}"
PRICES_TOO_DEEP = "The price table is nested too deeply to read."
PRICES_NOT_OBJECT = (
    "the price table must be a JSON object keyed by plan slug (every version) or version (pro@1)"
)
PRICES_UNKNOWN_PLAN = "unknown plan {slug!r}"
PRICES_NOT_EDITABLE = "{slug}: only {editable} can be proposed"
PRICES_UNPRICEABLE = (
    "The proposed prices cannot be priced (an amount beyond what the rating engine holds): "
    "{problem}"
)
NO_MARGIN_OTHER_CURRENCY = (
    "no margin: revenue is in {currency}, cost in {cost_currency} (amounts in different "
    "currencies are never added or subtracted)"
)
PRICES_DUPLICATE = "The price table names {name!r} twice in one object: say it once."
NO_USAGE = "No usage in this range: nothing to reprice."
