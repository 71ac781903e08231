"""The int8 tier: the same encoder with int8 weights, close to fp32 and served beside it."""

from __future__ import annotations

import torch

from tests.workers.helpers import make_request
from workers.runtime.encoder import load_encoder

TEXTS = [
    "The parcel arrived two weeks late and the box was crushed.",
    "Fantastic support team, they fixed my login problem in minutes.",
    "How do I export my invoices as a CSV file?",
    "I was charged twice for the same subscription this month.",
    "The app keeps crashing whenever I open the settings page on my phone.",
    "Great quality, fits perfectly, would buy again.",
]


def test_int8_embeddings_stay_close_to_fp32() -> None:
    fp32 = load_encoder("minilm-l6", device="cpu")
    int8 = load_encoder("minilm-l6-int8", device="cpu")
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in int8.model.modules())
    cosine = (fp32.embed(TEXTS) * int8.embed(TEXTS)).sum(dim=1)
    assert float(cosine.min()) >= 0.97 and float(cosine.mean()) >= 0.98


def test_int8_model_classifies_like_fp32(engine) -> None:
    labels = ["shipping", "support", "billing", "product quality"]
    fp32 = engine.classify(make_request(TEXTS, labels=labels))
    int8 = engine.classify(
        make_request(TEXTS, labels=labels, model="minilm-l6-int8", base_model="minilm-l6-int8")
    )
    assert "error" not in int8, int8
    same = sum(
        a["label"] == b["label"] for a, b in zip(fp32["results"], int8["results"], strict=True)
    )
    assert same >= len(TEXTS) - 1
