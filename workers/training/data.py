"""Training data as the worker sees it: the normalised JSONL the platform stored after
validating an upload (one ``{"text", "label"}`` object per line), and the held-out split."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass

from workers.artifacts import ArtifactStore
from workers.contract import VALIDATION_SHARE, held_out_rows


@dataclass(frozen=True)
class Rows:
    texts: list[str]
    labels: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: list[int]) -> Rows:
        return Rows([self.texts[i] for i in indices], [self.labels[i] for i in indices])


def rows_load(store: ArtifactStore, digest: str) -> Rows:
    texts: list[str] = []
    labels: list[str] = []
    # NOTE: split on "\n" only: str.splitlines() also splits at U+2028, U+2029, U+0085 and
    # others, which a JSON string may hold as they are (the platform writes them unescaped).
    for line in store.get(digest).decode("utf-8").split("\n"):
        if line.strip():
            row = json.loads(line)
            texts.append(row["text"])
            labels.append(row["label"])
    return Rows(texts, labels)


def stratified_split(
    rows: Rows, *, seed: int, share: float = VALIDATION_SHARE
) -> tuple[Rows, Rows]:
    """Hold out ``share`` of every label (at least one row, and at least one left to train
    on), so a rare label is both learned and measured. Deterministic for a seed."""
    by_label: dict[str, list[int]] = defaultdict(list)
    for index, label in enumerate(rows.labels):
        by_label[label].append(index)
    rng = random.Random(seed)
    train: list[int] = []
    held: list[int] = []
    for label in sorted(by_label):
        indices = by_label[label]
        rng.shuffle(indices)
        n_held = held_out_rows(len(indices), share)
        held += indices[:n_held]
        train += indices[n_held:]
    return rows.subset(sorted(train)), rows.subset(sorted(held))
