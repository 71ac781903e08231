"""RFC 3339 moments as the API reads them: a date-time (its offset optional: UTC without
one; "t" and "z" in either case; a leap second, hh:59:60, read as the next second, as POSIX
time has it) or, where a parameter allows it, a full-date (midnight UTC). Python's ISO 8601
parser alone also takes week dates, hours without minutes, "+0100" and "10,5", and refuses
a leap second."""

from __future__ import annotations

import re
from datetime import MINYEAR, UTC, datetime, timedelta
from typing import Any

from django.utils.dateparse import parse_date, parse_datetime

_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"(?:[Tt ][0-9]{2}:(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})(?:\.[0-9]+)?"
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})?)?"
)
_SECOND = timedelta(seconds=1)
# The first and last instants a datetime holds: where moments outside them are clamped.
FIRST_INSTANT = datetime.min.replace(tzinfo=UTC)
LAST_INSTANT = datetime.max.replace(tzinfo=UTC)


def rfc3339_parse(raw: str, *, full_date: bool) -> datetime | None:
    """The aware moment ``raw`` names, or None when it is not one (a full-date only where
    ``full_date``). The second after year 9999's last is that last instant."""
    form = _RFC3339.fullmatch(raw)
    if form is None or (form["minute"] is None and not full_date):
        return None
    # RFC 3339 allows a lower-case "t" and "z"; Python's ISO 8601 parser does not.
    text = raw.replace("t", "T").replace("z", "Z")
    leap = form["second"] == "60" and form["minute"] == "59"
    if leap:
        text = text[: form.start("second")] + "59" + text[form.end("second") :]
    try:
        moment = parse_datetime(text)
        if moment is None and (day := parse_date(text)) is not None:
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
    except (ValueError, OverflowError):
        return None
    if moment is None:
        return None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    if leap:
        try:
            return moment.astimezone(UTC) + _SECOND
        except OverflowError:
            return LAST_INSTANT
    return moment


def utc_clamped(moment: datetime) -> datetime:
    """``moment`` (aware) in UTC; one that falls outside what datetime holds in UTC (year 1
    with a positive offset, year 9999 with a negative one) becomes its first or last instant."""
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return FIRST_INSTANT if moment.year == MINYEAR else LAST_INSTANT


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def from_unix_seconds(seconds: int) -> datetime:
    """The moment of unix ``seconds``; beyond what a datetime holds, its first or last
    instant."""
    if seconds <= (FIRST_INSTANT - _EPOCH) // _SECOND:
        return FIRST_INSTANT
    if seconds > (LAST_INSTANT - _EPOCH) // _SECOND:
        return LAST_INSTANT
    return _EPOCH + seconds * _SECOND


# The forms a moment is taken in, as published (OpenAPI 3.0: ``nullable`` counts only
# beside a ``type``, so a null-able moment says it in each form).
def moment_schema(*, nullable: bool = False) -> dict[str, Any]:
    forms: list[dict[str, Any]] = [
        {"type": "string", "format": "date-time"},
        {"type": "string", "format": "date"},
        {"type": "integer"},
    ]
    return {"anyOf": [{**form, "nullable": True} if nullable else form for form in forms]}
