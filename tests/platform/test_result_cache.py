"""The result cache read in the admission round trip: a fine-tuned model's rows ride in it
once this process has classified with the model, and the version it remembers is only a
guess: a retrained model is never answered from the old model's rows."""

from __future__ import annotations

import json
import os
import uuid

import pytest
import redis
from rest_framework.test import APIClient

from inference.cache import cache_version, prefetch_keys
from inference.models import AIModel
from tests.factories import make_key, subscribe
from workers.contract import result_cache_keys

pytestmark = pytest.mark.django_db


def _cache(version: str, text: str, label: str) -> None:
    """A row as a worker stores it (tests need no worker: every call here is a hit)."""
    other = "b" if label == "a" else "a"
    row = {"label": label, "score": 0.9, "scores": {label: 0.9, other: 0.1}, "truncated": False}
    store = redis.Redis.from_url(os.environ["REDIS_URL"])
    store.set(
        result_cache_keys(version, None, None, [text])[0], json.dumps({**row, "tokens": 2}), ex=60
    )


def test_a_fine_tuned_models_rows_are_prefetched_and_never_a_retrained_models(tenant):
    subscribe(tenant, "pro")
    model = AIModel.objects.create(
        id=f"ft:minilm-l6:cache:{uuid.uuid4().hex[:8]}", tenant=tenant, kind="fine_tuned",
        base_model="minilm-l6", labels=["a", "b"], artifact="f" * 64,
    )  # fmt: skip
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {make_key(tenant, ['inference'])}")
    body = {"model": model.id, "inputs": ["hello there"]}
    old_version = cache_version(model, tenant.pk, True)
    assert old_version
    _cache(old_version, "hello there", "a")
    # Not classified with in this process yet: nothing to prefetch, the lookup reads alone.
    assert (
        prefetch_keys(
            tenant_id=tenant.pk,
            livemode=True,
            model_id=model.id,
            inputs=body["inputs"],
            labels=None,
        )
        == []
    )
    first = client.post("/v1/classify", body, format="json")
    assert first.status_code == 200, first.json()
    assert first.json()["results"][0]["label"] == "a"
    assert first.json()["usage"]["cached"] == 1
    assert prefetch_keys(
        tenant_id=tenant.pk, livemode=True, model_id=model.id, inputs=body["inputs"], labels=None
    ) == [result_cache_keys(old_version, None, None, ["hello there"])[0]]
    # Retrained: new weights, a new version. Admission still prefetches the old rows (this
    # process remembers the old version); the answer comes from the new version's.
    model.artifact = "e" * 64
    model.save(update_fields=["artifact"])
    new_version = cache_version(model, tenant.pk, True)
    assert new_version and new_version != old_version
    _cache(new_version, "hello there", "b")
    second = client.post("/v1/classify", body, format="json")
    assert second.status_code == 200, second.json()
    assert second.json()["results"][0]["label"] == "b"
    assert prefetch_keys(
        tenant_id=tenant.pk, livemode=True, model_id=model.id, inputs=body["inputs"], labels=None
    ) == [result_cache_keys(new_version, None, None, ["hello there"])[0]]
    # /metrics (unauthenticated) counts the lookups without naming the tenant's model.
    metrics = client.get("/metrics").content.decode()
    assert 'result_cache_lookups_total{model="fine_tuned",outcome="hit"}' in metrics
    assert model.id not in metrics
    # Labels are refused for a fine-tuned model: nothing is prefetched for such a request.
    assert (
        prefetch_keys(
            tenant_id=tenant.pk,
            livemode=True,
            model_id=model.id,
            inputs=body["inputs"],
            labels=["a", "b"],
        )
        == []
    )


def test_live_and_test_mode_keep_apart_caches(tenant):
    """A test key never reads what production classified (nor fills the live cache with
    answers that were never billed)."""
    base = AIModel.objects.unscoped().get(pk="minilm-l6")
    live, test = cache_version(base, tenant.pk, True), cache_version(base, tenant.pk, False)
    assert live and test and live != test
    body = {"model": "minilm-l6", "inputs": ["The  merger with Initech"], "labels": ["a", "b"]}
    row = {"label": "a", "score": 0.9, "scores": {"a": 0.9, "b": 0.1}, "truncated": False}
    store = redis.Redis.from_url(os.environ["REDIS_URL"])
    (key,) = result_cache_keys(live, ["a", "b"], None, ["the merger with initech"])
    store.set(key, json.dumps({**row, "tokens": 2}), ex=60)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {make_key(tenant, ['inference'])}")
    hit = client.post("/v1/classify", body, format="json")
    assert hit.status_code == 200 and hit.json()["usage"]["cached"] == 1
    keys = prefetch_keys(
        tenant_id=tenant.pk, livemode=False, model_id="minilm-l6", inputs=body["inputs"],
        labels=["a", "b"],
    )  # fmt: skip
    assert keys and keys[0] != key and store.get(keys[0]) is None


def test_admission_reads_no_rows_for_inputs_that_are_costly_to_normalise(tenant):
    """Normalising non-ASCII text costs up to ~1 us a character: admission, which may
    refuse the request, does not pay for a lot of it; the lookup after it does."""
    common = dict(tenant_id=tenant.pk, livemode=True, model_id="minilm-l6", labels=["a", "b"])
    assert len(prefetch_keys(inputs=["plain text " * 900], **common)) == 1  # ASCII: cheap
    assert len(prefetch_keys(inputs=["\ufdfa" * 100] * 2, **common)) == 2
    assert prefetch_keys(inputs=["\u4e2d" * 10_000], **common) == []


def test_texts_share_a_cache_row_only_if_the_model_reads_them_alike():
    """A review found NFKC in the key: the ligature fi, full-width letters and control
    characters the tokenizer drops read as the plain text, and its cached answer (and
    token count) was served for a text the model reads otherwise. Keys now follow the
    tokenizer: the same key, the same token ids."""
    from workers.runtime.encoder import load_encoder

    encoder = load_encoder("minilm-l6", device="cpu", threads=1)
    texts = [
        "fine work", "\ufb01ne work", "bad", "BAD", "\uff22\uff21\uff24", "ab cd", "ab\x1ccd",
        "abcd", "  Fine\t work\n", "caf\u00e9", "cafe\u0301", "cafe", "\u4e2d\u6587",
        "\u4e2d \u6587",
        "a\u2028b", "a b", "a\u00a0b", "x\x00y", "xy", "x\ufffdy", "\u0130stanbul", "istanbul",
        "ok\x85go", "okgo", "ok go", "tab\x0bbed", "tabbed", "\U0001f44d", "\U0001f44e",
        "great [MASK] product", "great [mask] product", "great[MASK]product", "good [SEP] bad",
        "good [sep] bad", "[UNK]", "[unk]", "[MASK][MASK]", "[MASK] [MASK]", "x [PAD]", "[cls]",
    ]  # fmt: skip
    keys = result_cache_keys("v", ["a", "b"], None, texts)
    ids = {text: tuple(t.ids) for text, t in zip(texts, encoder.tokenize(texts), strict=True)}
    by_key: dict[str, set[tuple[int, ...]]] = {}
    for text, key in zip(texts, keys, strict=True):
        by_key.setdefault(key, set()).add(ids[text])
    assert all(len(read) == 1 for read in by_key.values())
    key = dict(zip(texts, keys, strict=True))
    for plain, lookalike in [("fine work", "\ufb01ne work"), ("bad", "\uff22\uff21\uff24"),
                             ("ab cd", "ab\x1ccd")]:  # fmt: skip
        assert key[plain] != key[lookalike]
    # What the tokenizer does read alike still shares a row.
    assert key["bad"] == key["BAD"] and key["fine work"] == key["  Fine\t work\n"]
    assert key["caf\u00e9"] == key["cafe\u0301"] == key["cafe"]
    assert key["ab\x1ccd"] == key["abcd"]
    # Special tokens are found as written, before lower-casing (a review: one key for both).
    assert key["great [MASK] product"] != key["great [mask] product"]
    assert key["great [MASK] product"] == key["great[MASK]product"]
    assert key["[UNK]"] != key["[unk]"] and key["[MASK][MASK]"] == key["[MASK] [MASK]"]
    # Rows keyed the way before (NFKC: full-width BAD under plain BAD's key) are not read.
    assert all(k.startswith("rc2:") for k in keys)


def test_the_ascii_shortcut_reads_text_as_the_tokenizers_normaliser_does():
    import random

    from workers.text_form import _bert_normalizer, _normalised

    def by_normaliser(text: str) -> str:
        return " ".join(p for p in _bert_normalizer().normalize_str(text).split(" ") if p)

    rng = random.Random(5)
    samples = [chr(c) for c in range(128)]
    samples += ["".join(rng.choice(samples) for _ in range(40)) for _ in range(500)]
    for text in samples:
        assert _normalised(text) == by_normaliser(text), repr(text)


def test_the_cache_keys_normalise_as_every_base_models_tokenizer_does():
    import json

    from workers.runtime.encoder import BASE_MODELS
    from workers.text_form import _SPECIAL_TOKENS

    for name, path in BASE_MODELS.items():
        tokenizer = json.loads((path() / "tokenizer.json").read_text())
        assert tokenizer["normalizer"] == {"type": "BertNormalizer", "clean_text": True,
                                           "handle_chinese_chars": True, "strip_accents": None,
                                           "lowercase": True}, name  # fmt: skip
        # Its special tokens are found as written, anywhere in a text: the keys' cut points.
        added = tokenizer["added_tokens"]
        assert {t["content"] for t in added} == set(_SPECIAL_TOKENS.pattern[1:-1].replace(
            "\\", "").split("|")), name  # fmt: skip
        assert not any(t["normalized"] or t["single_word"] or t["lstrip"] or t["rstrip"]
                       for t in added), name  # fmt: skip


def test_cache_versions_follow_the_model_weights():
    base = AIModel(id="minilm-l6", kind="base", base_model="minilm-l6")
    tuned = AIModel(
        id="ft:minilm-l6:a:1", kind="fine_tuned", base_model="minilm-l6", artifact="abc"
    )
    retrained = AIModel(
        id="ft:minilm-l6:a:1", kind="fine_tuned", base_model="minilm-l6", artifact="def"
    )
    assert cache_version(base, "t1", True)
    assert cache_version(tuned, "t1", True) != cache_version(retrained, "t1", True)
    # One tenant's answers never serve another's, nor one mode's the other's.
    assert cache_version(base, "t1", True) != cache_version(base, "t2", True)
    assert cache_version(base, "t1", True) != cache_version(base, "t1", False)
