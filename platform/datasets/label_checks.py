"""The checks of a dataset's label set, once its rows are read: enough labels, not too many,
enough examples of each, none that reads as another."""

from __future__ import annotations

import unicodedata
from typing import TYPE_CHECKING

from workers.contract import MAX_LABELS

from . import messages

if TYPE_CHECKING:
    from .validation import Validation

MIN_LABELS = 2
MIN_EXAMPLES_PER_LABEL = 5
WARN_EXAMPLES_PER_LABEL = 10


def label_set_check(result: Validation) -> None:
    """Errors and warnings on ``result``'s labels as a whole (``line: null``)."""
    counts = result.labels
    seen = {label: _seen_as(label) for label in counts}
    _refuse_lookalikes(result, counts, seen)
    _warn_case_variants(result, counts, seen)
    if len(counts) < MIN_LABELS:
        result.error(None, messages.TOO_FEW_LABELS.format(count=len(counts)))
    if len(counts) > MAX_LABELS:
        result.error(None, messages.TOO_MANY_LABELS.format(limit=MAX_LABELS, count=len(counts)))
    for label, count in counts.items():
        if count < MIN_EXAMPLES_PER_LABEL:
            result.error(
                None,
                messages.TOO_FEW_EXAMPLES.format(
                    label=label,
                    count=count,
                    examples="example" if count == 1 else "examples",
                    minimum=MIN_EXAMPLES_PER_LABEL,
                ),
            )
        elif count < WARN_EXAMPLES_PER_LABEL:
            result.warn(None, messages.FEW_EXAMPLES.format(label=label, count=count))


def _refuse_lookalikes(result: Validation, counts: dict[str, int], seen: dict[str, str]) -> None:
    """An error per set of labels that ``seen`` (``_seen_as``) reads as one text: a composed
    and a decomposed accent, invisible format characters (a zero-width space, a direction
    mark). They were trained as classes named alike in every answer's scores."""
    lookalikes: dict[str, list[str]] = {}
    for label in counts:
        lookalikes.setdefault(seen[label], []).append(label)
    for group in lookalikes.values():
        if len(group) > 1:
            names = ", ".join(f"{label!a} ({counts[label]})" for label in group)
            result.error(None, messages.LABEL_LOOKALIKES.format(labels=names))


def _seen_as(label: str) -> str:
    """A label as a reader sees it: composed (NFC), without format characters (Cf)."""
    return "".join(
        c for c in unicodedata.normalize("NFC", label) if unicodedata.category(c) != "Cf"
    )


def _warn_case_variants(result: Validation, counts: dict[str, int], seen: dict[str, str]) -> None:
    """One warning per set of labels that differ only in case ("Pos", "pos"): trained as
    the classes they are, but rarely meant as two (/v1/classify refuses such labels)."""
    variants: dict[str, list[str]] = {}
    for label in counts:
        variants.setdefault(seen[label].casefold(), []).append(label)
    for group in variants.values():
        if len({seen[label] for label in group}) > 1:  # (lookalikes alone: an error)
            names = ", ".join(f"'{label}' ({counts[label]})" for label in group)
            result.warn(None, messages.LABEL_CASE_VARIANTS.format(labels=names))
