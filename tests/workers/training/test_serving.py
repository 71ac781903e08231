"""Serving fine-tuned models in the inference engine: a head and a LoRA model both ride the
shared batcher (a LoRA model's rows carry its adapter into the shared forward passes), a
missing artifact is a clean error; their int8 variants ride the int8 encoder's batcher."""

from __future__ import annotations

import torch
from torch.ao.nn.quantized.dynamic import Linear as QuantizedLinear

from tests.workers.helpers import lora_model_file
from tests.workers.helpers import make_request as classify_request
from workers.artifacts import ArtifactStore
from workers.runtime import classifier
from workers.runtime.classifier import ClassifierEngine
from workers.runtime.finetuned import lora_adapter
from workers.settings import settings_from_env
from workers.training.data import rows_load, stratified_split
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


def test_a_lora_model_on_the_int8_base_is_measured_as_it_is_served(engine):
    # int8 layers take no gradients (this job used to crash the worker): it trains on the
    # same weights in fp32, and its metrics are those of the int8 weights with its adapter.
    store = ArtifactStore()
    digest = store.put(dataset_bytes("support_tickets.jsonl", 80))
    model_id = "ft:minilm-l6-int8:test:abc"
    request = make_request(
        digest,
        method="lora",
        base_model="minilm-l6-int8",
        model_id=model_id,
        hyperparameters={"epochs": 1},
    )
    recorder = Recorder()
    result = train_run(JobContext(request, store, recorder, lambda: False, threads=2))
    metrics = result["metrics"]
    assert not [name for name in metrics if name.startswith("int8_")]  # no variant of int8
    assert [e for e in recorder.of("log") if "as served" in e[1]]
    _, held_out = stratified_split(rows_load(store, digest), seed=0)
    answer = engine.classify(
        classify_request(
            list(held_out.texts),
            model=model_id,
            base_model="minilm-l6-int8",
            artifact=result["artifact"],
        )
    )
    assert "error" not in answer, answer
    right = [r["label"] == y for r, y in zip(answer["results"], held_out.labels, strict=True)]
    assert round(sum(right) / len(right), 4) == metrics["accuracy"]


def test_a_lora_model_rides_the_shared_batcher_with_its_adapter(engine):
    result = train("lora", 80, epochs=1)
    before = engine.runtime("minilm-l6").batcher.stats().texts
    answer = engine.classify(fine_tuned_request(result))
    assert "error" not in answer, answer
    assert [row["label"] for row in answer["results"]][:2] == ["billing", "technical"]
    assert engine.runtime("minilm-l6").batcher.stats().texts == before + 4
    loaded = engine.fine_tuned.get(
        result["artifact"], lambda name: engine.runtime(name).encoder.model
    )
    assert loaded.adapter is not None and loaded.model.method == "lora"


def test_an_adapter_beside_the_shared_weights_gives_the_adapted_model(encoder):
    model, adapters = adapted_model(
        encoder, targets=["query", "key", "value"], rank=4, alpha=8.0, dropout=0.0
    )
    torch.manual_seed(0)
    for adapter in adapters:
        for b in adapter.B.values():
            torch.nn.init.normal_(b, std=0.02)
    ids = [t.ids for t in encoder.tokenize(INPUTS)]
    expected = embed_with(model, ids)
    plain = encoder.embed_ids(ids)
    served = lora_adapter(encoder.model, lora_state(adapters), rank=4, alpha=8.0)
    # Adapted and plain rows in one forward pass: each row gets its own model's embedding.
    mixed = encoder.embed_ids(ids + ids, [served] * len(ids) + [None] * len(ids))
    if encoder.device.type == "cpu":
        assert torch.allclose(mixed[: len(ids)], expected, atol=1e-5)
        assert torch.allclose(mixed[len(ids) :], plain, atol=1e-5)
    else:  # serving on a GPU runs under bf16 autocast; the reference is fp32
        cosine = torch.nn.functional.cosine_similarity(mixed[: len(ids)], expected, dim=1)
        assert float(cosine.min()) >= 0.9995
    # The adapter changed the embeddings; the shared weights are untouched.
    assert not torch.allclose(plain, expected, atol=1e-3)
    assert torch.equal(encoder.embed_ids(ids), plain)


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


def test_a_lora_models_int8_variant_rides_the_int8_batcher_with_its_adapter(engine):
    result = train("lora", 80, epochs=1)
    fp32 = labels_of(engine.classify(fine_tuned_request(result)))
    before = {name: engine.runtime(name).batcher.stats().texts for name in BASES}
    int8 = labels_of(engine.classify(int8_request(result)))
    assert sum(a == b for a, b in zip(fp32, int8, strict=True)) >= 3
    assert int8[:2] == ["billing", "technical"]
    after = {name: engine.runtime(name).batcher.stats().texts for name in BASES}
    assert after == {
        "minilm-l6": before["minilm-l6"],
        "minilm-l6-int8": before["minilm-l6-int8"] + 4,
    }

    def body(name):
        return engine.runtime(name).encoder.model

    # One LRU, two entries: the adapter laid out for the fp32 body and for the int8 one.
    plain = engine.fine_tuned.get(result["artifact"], body, base_model="minilm-l6")
    quantised = engine.fine_tuned.get(result["artifact"], body, base_model="minilm-l6-int8")
    assert plain.adapter is not None and quantised.adapter is not None
    assert plain.adapter is not quantised.adapter
    int8_body = body("minilm-l6-int8")
    assert any(isinstance(m, QuantizedLinear) for m in int8_body.modules()) == (
        engine.runtime("minilm-l6-int8").encoder.device.type == "cpu"
    )
    # Where the int8 body's activations are smoothed, the adapter takes the smoothing in.
    if int8_body.layers[0].in_scale is not None:
        assert not torch.equal(plain.adapter.a[0], quantised.adapter.a[0])


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


def test_an_evicted_lora_model_is_loaded_again_and_answers_the_same(monkeypatch):
    monkeypatch.setattr(classifier, "FINE_TUNED_CACHE_SIZE", 1)
    engine = ClassifierEngine(settings_from_env())
    try:
        store = ArtifactStore()
        first, second = store.put(lora_model_file(2)), store.put(lora_model_file(3))
        answer = labels_of(engine.classify(classify_request(INPUTS, model="ft:1", artifact=first)))
        assert labels_of(engine.classify(classify_request(INPUTS, model="ft:2", artifact=second)))
        again = engine.classify(classify_request(INPUTS, model="ft:1", artifact=first))
        assert labels_of(again) == answer
    finally:
        engine.close()
