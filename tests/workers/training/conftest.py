from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from workers.artifacts import ArtifactStore
from workers.contract import CONTRACT_VERSION, TrainRequest
from workers.training.runner import JobContext

DATA = Path(__file__).resolve().parents[2] / "data"


def dataset_bytes(name: str, limit: int | None = None) -> bytes:
    lines = (DATA / name).read_text().splitlines()[:limit]
    rows = [json.loads(line) for line in lines if line]
    return "".join(
        json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in rows
    ).encode()


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


def make_request(training_file: str, method: str = "head", **overrides: Any) -> TrainRequest:
    request: TrainRequest = {
        "v": CONTRACT_VERSION,
        "job_id": "ftjob_test",
        "attempt": 1,
        "tenant_id": "ten_test",
        "api_key_id": "key_test",
        "livemode": False,
        "base_model": "minilm-l6",
        "method": method,  # type: ignore[typeddict-item]
        "model_id": "ft:minilm-l6:test:abc",
        "training_file": training_file,
        "validation_file": None,
        "hyperparameters": {},
        "seed": 0,
    }
    request.update(overrides)  # type: ignore[typeddict-item]
    return request


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.warnings: list[str] = []

    def __call__(self, type: str, message: str, *, level: str = "info", data: Any = None) -> None:
        self.events.append((type, message, dict(data or {})))
        if level == "warning":
            self.warnings.append(message)

    def of(self, type: str) -> list[tuple[str, str, dict[str, Any]]]:
        return [e for e in self.events if e[0] == type]


@pytest.fixture
def context(store: ArtifactStore) -> Callable[..., tuple[JobContext, Recorder]]:
    def build(request: TrainRequest, cancelled: Callable[[], bool] = lambda: False):
        recorder = Recorder()
        return JobContext(request, store, recorder, cancelled, threads=2), recorder

    return build
