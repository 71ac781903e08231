from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from datasets.services import dataset_create
from finetuning.services import fine_tune_create
from tests.factories import make_key, subscribe

DATA = Path(__file__).resolve().parents[1] / "data"


def rows_file(rows: list[dict[str, str]]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def read_rows(name: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line]


@pytest.fixture(autouse=True)
def pro_plan(request: pytest.FixtureRequest) -> None:
    """The free plan allows no fine-tuned models: put the test's tenant on pro (10)."""
    if "tenant" in request.fixturenames:
        subscribe(request.getfixturevalue("tenant"), "pro")


@pytest.fixture
def make_dataset() -> Callable[..., Any]:
    def make(tenant: Any, rows: list[dict[str, str]] | None = None, data: bytes | None = None):
        if data is None:
            rows = rows or read_rows("support_tickets.jsonl")[:60]
            data = rows_file(rows)
        return dataset_create(tenant=tenant, upload=SimpleUploadedFile("d.jsonl", data))

    return make


@pytest.fixture
def job(tenant: Any, make_dataset: Any) -> Any:
    """A queued head job (nothing is sent: on-commit callbacks do not run in `db` tests)."""
    make_key(tenant, ["training"])
    from apikeys.models import ApiKey

    return fine_tune_create(
        tenant=tenant,
        api_key=ApiKey.objects.for_tenant(tenant).get(),
        base_model="minilm-l6",
        training_dataset_id=make_dataset(tenant).id,
        validation_dataset_id=None,
        method="head",
        hyperparameters={},
        suffix="tickets",
        seed=0,
    )
