"""Classification metrics in plain Python (no scikit-learn in the worker)."""

from __future__ import annotations

from collections.abc import Sequence


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
