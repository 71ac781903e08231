"""Fixtures for the data-plane tests: the real encoder, a real engine, and a real Celery
worker process on the test Redis. No Django is imported here."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from workers.runtime.classifier import ClassifierEngine
from workers.runtime.encoder import Encoder, load_encoder
from workers.settings import settings_from_env

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def encoder() -> Encoder:
    return load_encoder("minilm-l6")


@pytest.fixture
def engine() -> Iterator[ClassifierEngine]:
    """A fresh engine (own cache and batcher) over the shared, already loaded encoder."""
    built = ClassifierEngine(settings_from_env())
    yield built
    built.close()


@pytest.fixture(scope="session")
def live_worker(inference_worker: str) -> str:
    """The session's real worker process (tests/conftest.py); its name."""
    return inference_worker
