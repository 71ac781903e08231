"""Serving fine-tuned models in the inference engine: a head rides the shared batcher, a
LoRA model runs on a merged copy of the encoder with its own batcher, a missing artifact is a
clean error; their int8 variants ride the int8 encoder's batcher, or a merged-then-quantised
copy."""

from __future__ import annotations

import os
import threading

import torch
from torch.ao.nn.quantized.dynamic import Linear as QuantizedLinear

from tests.workers.helpers import make_request as classify_request
from workers.artifacts import ArtifactStore
from workers.runtime import classifier
from workers.runtime.classifier import ClassifierEngine
from workers.runtime.finetuned import model_file_read
from workers.settings import settings_from_env
from workers.training.lora import adapted_model, embed_with, lora_state
from workers.training.runner import JobContext, train_run

from .conftest import Recorder, dataset_bytes, make_request

BASES = ("minilm-l6", "minilm-l6-int8")
INPUTS = [
    "I was charged twice for my subscription, please refund one payment",
    "The app crashes with an error every time I open the settings page",
    "My parcel never arrived and the tracking number does not work",
    "I can't log in, the password reset link has expired",
]


def train(method: str, limit: int, **hyper):
    store = ArtifactStore()  # the engine's store (ARTIFACT_DIR)
    digest = store.put(dataset_bytes("support_tickets.jsonl", limit))
    request = make_request(digest, method=method, hyperparameters=hyper)
    return train_run(JobContext(request, store, Recorder(), lambda: False, threads=2))


def fine_tuned_request(result, inputs=INPUTS):
    return classify_request(inputs, model="ft:minilm-l6:test:abc", artifact=result["artifact"])


def test_a_head_model_is_served_through_the_shared_batcher(engine):
    result = train("head", 160)
    before = engine.runtime("minilm-l6").batcher.stats().texts
    answer = engine.classify(fine_tuned_request(result))
    assert "error" not in answer, answer
    assert [row["label"] for row in answer["results"]] == [
        "billing",
        "technical",
        "delivery",
        "account",
    ]
    assert set(answer["results"][0]["scores"]) == set(result["labels"])
    assert abs(sum(answer["results"][0]["scores"].values()) - 1) < 1e-5
    assert answer["usage"]["inputs"] == 4 and answer["usage"]["tokens"] > 20
    assert engine.runtime("minilm-l6").batcher.stats().texts == before + 4


def test_a_lora_model_is_served_from_a_merged_encoder(engine):
    result = train("lora", 80, epochs=1)
    answer = engine.classify(fine_tuned_request(result))
    assert "error" not in answer, answer
    assert [row["label"] for row in answer["results"]][:2] == ["billing", "technical"]
    loaded = engine.fine_tuned.get(result["artifact"], lambda name: engine.runtime(name).encoder)
    assert loaded.encoder is not None and loaded.model.method == "lora"


def test_merging_adapters_gives_the_adapted_model(encoder):
    model, adapters = adapted_model(
        encoder, targets=["query", "key", "value"], rank=4, alpha=8.0, dropout=0.0
    )
    torch.manual_seed(0)
    for adapter in adapters:
        for b in adapter.B.values():
            torch.nn.init.normal_(b, std=0.02)
    ids = [t.ids for t in encoder.tokenize(INPUTS)]
    expected = embed_with(model, ids)
    from workers.runtime.finetuned import model_file_write

    data = model_file_write(
        base_model="minilm-l6",
        method="lora",
        labels=["a", "b"],
        head_weight=torch.zeros(2, encoder.dim),
        head_bias=torch.zeros(2),
        lora=lora_state(adapters),
        lora_rank=4,
        lora_alpha=8.0,
    )
    merged = model_file_read(data).merged_encoder(encoder, "merged")
    if merged.device.type == "cpu":
        assert torch.allclose(merged.embed_ids(ids), expected, atol=1e-5)
    else:  # serving on a GPU runs under bf16 autocast; the reference is fp32
        cosine = torch.nn.functional.cosine_similarity(merged.embed_ids(ids), expected, dim=1)
        assert float(cosine.min()) >= 0.9995
    # The shared encoder is untouched.
    assert not torch.allclose(encoder.embed_ids(ids), expected, atol=1e-3)


def int8_request(result, inputs=INPUTS):
    return classify_request(
        inputs,
        model="ft:minilm-l6-int8:test:abc",
        base_model="minilm-l6-int8",
        artifact=result["artifact"],
    )


def labels_of(answer):
    assert "error" not in answer, answer
    return [row["label"] for row in answer["results"]]


def test_a_head_models_int8_variant_rides_the_int8_batcher(engine):
    result = train("head", 160)
    fp32 = labels_of(engine.classify(fine_tuned_request(result)))
    before = {name: engine.runtime(name).batcher.stats().texts for name in BASES}
    answer = engine.classify(int8_request(result))
    assert labels_of(answer) == fp32 == ["billing", "technical", "delivery", "account"]
    assert answer["model"] == "ft:minilm-l6-int8:test:abc"
    after = {name: engine.runtime(name).batcher.stats().texts for name in BASES}
    assert after == {
        "minilm-l6": before["minilm-l6"],
        "minilm-l6-int8": before["minilm-l6-int8"] + 4,
    }


def test_a_lora_models_int8_variant_is_merged_then_quantised(engine):
    result = train("lora", 80, epochs=1)
    fp32 = labels_of(engine.classify(fine_tuned_request(result)))
    int8 = labels_of(engine.classify(int8_request(result)))
    assert sum(a == b for a, b in zip(fp32, int8, strict=True)) >= 3
    assert int8[:2] == ["billing", "technical"]

    def base(name):
        return engine.runtime(name).encoder

    # One LRU, two entries: the fp32 copy and the quantised one never collide.
    plain = engine.fine_tuned.get(result["artifact"], base, base_model="minilm-l6")
    quantised = engine.fine_tuned.get(result["artifact"], base, base_model="minilm-l6-int8")
    assert plain.encoder is not None and quantised.encoder is not None
    assert plain.encoder is not quantised.encoder

    def dynamic_int8(loaded):
        return any(isinstance(m, QuantizedLinear) for m in loaded.encoder.model.modules())

    # Quantised where int8 runs, the CPU; a GPU worker serves the int8 id in bf16.
    assert dynamic_int8(quantised) == (quantised.encoder.device.type == "cpu")
    assert not dynamic_int8(plain)


def test_a_model_cannot_be_served_on_a_base_it_has_no_tier_on(engine):
    result = train("head", 80)
    answer = engine.classify(
        classify_request(INPUTS, model="ft:x", base_model="minilm-l12", artifact=result["artifact"])
    )
    assert answer["error"]["code"] == "model_unavailable"
    # A model trained on the int8 base is not served on fp32 weights either.
    store = ArtifactStore()
    digest = store.put(dataset_bytes("support_tickets.jsonl", 80))
    request = make_request(digest, base_model="minilm-l6-int8")
    on_int8 = train_run(JobContext(request, store, Recorder(), lambda: False, threads=2))
    refused = engine.classify(fine_tuned_request(on_int8))
    assert refused["error"]["code"] == "model_unavailable"
    assert "error" not in engine.classify(int8_request(on_int8))


def test_a_missing_artifact_is_a_clean_error(engine):
    answer = engine.classify(fine_tuned_request({"artifact": "0" * 64}))
    assert answer["error"]["code"] == "model_unavailable" and answer["results"] == []


def lora_artifact(encoder, seed: int) -> str:
    """A LoRA model file with random adapters on every layer's query and value."""
    generator = torch.Generator().manual_seed(seed)
    lora = {}
    for layer in range(len(encoder.model.layers)):
        for target in ("query", "value"):
            lora[f"{layer}.{target}.A"] = torch.randn(4, encoder.dim, generator=generator) * 0.05
            lora[f"{layer}.{target}.B"] = torch.randn(encoder.dim, 4, generator=generator) * 0.05
    from workers.runtime.finetuned import model_file_write

    data = model_file_write(
        base_model="minilm-l6",
        method="lora",
        labels=["a", "b", "c"],
        head_weight=torch.randn(3, encoder.dim, generator=generator),
        head_bias=torch.zeros(3),
        lora=lora,
        lora_rank=4,
        lora_alpha=8.0,
    )
    return ArtifactStore().put(data)


def run_together(engine, requests):
    answers: list[object] = [None] * len(requests)
    barrier = threading.Barrier(len(requests))

    def run(i: int) -> None:
        barrier.wait()
        answers[i] = engine.classify(requests[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_concurrent_requests_for_one_lora_model_share_its_forward_passes(encoder):
    artifact = lora_artifact(encoder, seed=1)
    requests = [
        classify_request([INPUTS[i % 4]], model="ft:minilm-l6:t:lora", artifact=artifact)
        for i in range(24)
    ]
    alone_engine = ClassifierEngine(settings_from_env())
    alone = [alone_engine.classify(r) for r in requests]
    alone_engine.close()
    engine = ClassifierEngine(settings_from_env({**os.environ, "WORKER_MAX_WAIT_MS": "20"}))
    try:
        together = run_together(engine, requests)
        loaded = engine.fine_tuned.get(
            artifact, lambda name: engine.runtime(name).encoder, base_model="minilm-l6"
        )
        assert loaded.batcher is not None
        stats = loaded.batcher.stats()
        # Batched by adapter: fewer forward passes than requests, none on the shared encoder.
        assert stats.texts == 24 and stats.forwards < 24
        assert engine.runtime("minilm-l6").batcher.stats().texts == 0
        for solo, mixed in zip(alone, together, strict=True):
            assert isinstance(mixed, dict) and "error" not in mixed, mixed
            (a,), (b,) = solo["results"], mixed["results"]
            assert a["label"] == b["label"]
            for label, score in a["scores"].items():
                assert abs(score - b["scores"][label]) < 1e-4
        # Each request is charged its token share of the forward passes it rode, so the
        # charges add up to the time the model was busy, not to the time requests queued.
        charged = sum(answer["usage"]["compute_ms"] for answer in together)  # type: ignore[index]
        assert abs(charged - stats.busy_ms) <= 0.001 * len(together) + 0.01 * stats.busy_ms
    finally:
        engine.close()


def test_an_evicted_lora_models_batcher_is_closed_and_the_model_still_serves(encoder, monkeypatch):
    monkeypatch.setattr(classifier, "FINE_TUNED_CACHE_SIZE", 1)
    engine = ClassifierEngine(settings_from_env())
    try:
        first, second = lora_artifact(encoder, seed=2), lora_artifact(encoder, seed=3)

        def base(name):
            return engine.runtime(name).encoder

        answer = engine.classify(classify_request(INPUTS, model="ft:1", artifact=first))
        evicted = engine.fine_tuned.get(first, base, base_model="minilm-l6")
        assert labels_of(engine.classify(classify_request(INPUTS, model="ft:2", artifact=second)))
        assert evicted.batcher is not None and evicted.batcher.closed
        # Asked for again, the first model is loaded afresh and answers as before.
        again = engine.classify(classify_request(INPUTS, model="ft:1", artifact=first))
        assert labels_of(again) == labels_of(answer)
        assert (
            engine.fine_tuned.get(first, base, base_model="minilm-l6").batcher
            is not evicted.batcher
        )
    finally:
        engine.close()
