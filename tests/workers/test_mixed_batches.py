"""Cross-tenant batching is invisible to each tenant: requests for the base model, for many
tenants' fine-tuned heads and for several tenants' LoRA models share forward passes, and
every row still gets exactly the answer its own model gives when served alone; the compute
charged to the requests adds up to the time the model was busy."""

from __future__ import annotations

import os
import threading

import torch

from tests.workers.helpers import lora_model_file, make_request
from workers.artifacts import ArtifactStore
from workers.runtime.classifier import ClassifierEngine
from workers.runtime.finetuned import model_file_write
from workers.settings import settings_from_env

TEXTS = [
    "My parcel never arrived and tracking has not moved for a week.",
    "I was charged twice for the same order, please refund one.",
    "The app crashes every time I open the settings page.",
    "Lovely quality, fits perfectly, five stars.",
    "How do I change the email address on my account?",
    "Customer service was rude and unhelpful on the phone.",
]


def _loras(n: int) -> list[str]:
    store = ArtifactStore(os.environ["ARTIFACT_DIR"])
    return [store.put(lora_model_file(seed)) for seed in range(n)]


def _heads(n: int) -> list[str]:
    store = ArtifactStore(os.environ["ARTIFACT_DIR"])
    generator = torch.Generator().manual_seed(7)
    return [
        store.put(model_file_write(
            base_model="minilm-l6", method="head", labels=[f"l{i}" for i in range(3)],
            head_weight=torch.randn(3, 384, generator=generator),
            head_bias=torch.randn(3, generator=generator),
        ))
        for _ in range(n)
    ]  # fmt: skip


def _request(n: int, artifacts: list[str]):  # type: ignore[no-untyped-def]
    text = [TEXTS[n % len(TEXTS)]]
    if n % 4 == 0:  # every fourth request is zero-shot on the base model
        return make_request(text, labels=["shipping", "billing", "product"])
    artifact = artifacts[n % len(artifacts)]
    return make_request(text, model=f"ft:minilm-l6:t{n % len(artifacts)}:x", artifact=artifact)


def test_each_row_gets_its_own_models_answer_in_a_mixed_batch() -> None:
    artifacts = _heads(10) + _loras(3)
    requests = [_request(n, artifacts) for n in range(60)]
    # Alone: one request at a time, nothing to batch with.
    alone_engine = ClassifierEngine(settings_from_env())
    alone = [alone_engine.classify(r) for r in requests]
    alone_engine.close()
    # Together: 60 concurrent requests over 14 models through one shared batcher.
    engine = ClassifierEngine(settings_from_env({**os.environ, "WORKER_MAX_WAIT_MS": "20"}))
    together: list[object] = [None] * len(requests)
    barrier = threading.Barrier(len(requests))

    def run(i: int) -> None:
        barrier.wait()
        together[i] = engine.classify(requests[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = engine.runtime("minilm-l6").batcher.stats()
    engine.close()
    assert stats.texts / stats.forwards > 2  # they really shared forward passes
    charged = sum(answer["usage"]["compute_ms"] for answer in together)  # type: ignore[index]
    assert abs(charged - stats.busy_ms) <= 0.001 * len(together) + 0.01 * stats.busy_ms
    for solo, mixed in zip(alone, together, strict=True):
        assert isinstance(mixed, dict) and "error" not in mixed, mixed
        (a,), (b,) = solo["results"], mixed["results"]
        assert a["label"] == b["label"]
        for label, score in a["scores"].items():
            assert abs(score - b["scores"][label]) < 1e-4
