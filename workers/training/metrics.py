"""Classification metrics in plain Python (no scikit-learn in the worker)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction


def classification_metrics(
    truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str]
) -> dict[str, object]:
    """accuracy, macro-F1 over ``labels`` and per-label F1 (rounded to 4 places). A label with
    no true and no predicted rows scores F1 = 0 (it is in the label set, so it counts)."""
    total = len(truth)
    correct = sum(t == p for t, p in zip(truth, predicted, strict=True))
    per_label: dict[str, float] = {}
    for label in labels:
        tp = sum(t == label and p == label for t, p in zip(truth, predicted, strict=True))
        fp = sum(t != label and p == label for t, p in zip(truth, predicted, strict=True))
        fn = sum(t == label and p != label for t, p in zip(truth, predicted, strict=True))
        per_label[label] = round(2 * tp / (2 * tp + fp + fn), 4) if tp else 0.0
    return {
        "accuracy": round(correct / total, 4) if total else 0.0,
        "macro_f1": round(sum(per_label.values()) / len(per_label), 4) if per_label else 0.0,
        "per_label_f1": per_label,
    }


def accuracy_delta_points(
    truth: Sequence[str], predicted: Sequence[str], reference: Sequence[str]
) -> float:
    """``predicted``'s accuracy minus ``reference``'s on the same rows, in percentage points,
    to 2 places rounded down: toward the larger loss, so that a threshold compared against it
    never accepts a loss above itself (rounded to nearest, 3 rows lost in 299, -1.0033
    points, read as -1.0 and passed a 1-point limit)."""
    if not truth:
        return 0.0
    gained = sum(t == p for t, p in zip(truth, predicted, strict=True))
    gained -= sum(t == r for t, r in zip(truth, reference, strict=True))
    return math.floor(Fraction(100 * 100 * gained, len(truth))) / 100
