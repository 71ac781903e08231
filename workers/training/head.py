"""The ``head`` method: a softmax classifier on frozen, mean-pooled, normalised embeddings.

Embeddings are computed once per (encoder, dataset content hash) and cached in the artifact
store, so a second job on the same file (other hyperparameters, another suffix) skips the
encoder entirely and trains in well under a second.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load, save

from workers.artifacts import ArtifactMissingError, ArtifactStore, embeddings_ref
from workers.runtime.bert import Adapter
from workers.runtime.encoder import Encoder
from workers.runtime.finetuned import HEAD_SCALE

EMBED_BATCH = 32
Step = Callable[[], None]  # called at step boundaries; raises to stop (cancellation)
EpochHook = Callable[[int, float, torch.Tensor, torch.Tensor], None]


def embed_sorted(
    encoder: Encoder, ids: Sequence[Sequence[int]], step: Step, adapter: Adapter | None = None
) -> torch.Tensor:
    """Embeddings of tokenized texts, every row with ``adapter`` when one is given."""
    # Length-bucketed batches: sorting by length first keeps padding near zero (~1.4x faster
    # than batching in file order on these 2 cores).
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = torch.empty((len(ids), encoder.dim))
    for start in range(0, len(order), EMBED_BATCH):
        chunk = order[start : start + EMBED_BATCH]
        rows = [ids[i] for i in chunk]
        out[chunk] = (
            encoder.embed_ids(rows)
            if adapter is None
            else encoder.embed_ids(rows, [adapter] * len(rows))
        )
        step()
    return out


def embeddings_get(
    *,
    store: ArtifactStore,
    encoder: Encoder,
    owner: str,
    source: str,
    more: str = "",
    texts: Sequence[str],
    step: Step,
) -> tuple[torch.Tensor, int, bool]:
    """(embeddings, total tokens, whether they came from the cache) for ``texts``, rows of
    dataset file ``source`` (``more`` tells apart several sets from one file). Cached per
    tenant (``owner``): a job's events say whether its embeddings were reused, which would
    tell one tenant that another had trained on the very same file. A dataset's delete
    releases them (``ArtifactStore.embeddings_release``)."""
    tokenized = encoder.tokenize(list(texts))
    tokens = sum(t.tokens for t in tokenized)
    ref = embeddings_ref(encoder.encoder_id, owner, source, more)
    cached = store.ref_get(ref)
    if cached is not None:
        try:
            vectors = load(store.get(cached))["embeddings"]
        except ArtifactMissingError:  # released since the ref was read: computed again
            vectors = None
        if vectors is not None and vectors.shape[0] == len(texts):
            return vectors, tokens, True
    vectors = embed_sorted(encoder, [t.ids for t in tokenized], step)
    # The owner in the bytes: each tenant's cache is a blob of its own, so one tenant's
    # dataset delete releasing its cache never empties another's (whose next job would say
    # it computed embeddings it had reused: that the other had trained on the same file).
    data = save({"embeddings": vectors.contiguous()}, metadata={"owner": owner})
    store.ref_set(ref, store.put(data))
    return vectors, tokens, False


def head_init(x: torch.Tensor, y: torch.Tensor, n_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of W start at each label's normalised centroid: epoch 0 is already the few-shot
    nearest-centroid classifier, and training only has to sharpen it."""
    weight = torch.stack([F.normalize(x[y == k].mean(dim=0), dim=0) for k in range(n_labels)])
    return weight, torch.zeros(n_labels)


def head_train(
    *,
    x: torch.Tensor,
    y: torch.Tensor,
    n_labels: int,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    seed: int,
    on_epoch: EpochHook,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mini-batch AdamW on cross-entropy; ``on_epoch(epoch, loss, W, b)`` after each epoch."""
    generator = torch.Generator().manual_seed(seed)
    w0, b0 = head_init(x, y, n_labels)
    weight = torch.nn.Parameter(w0.clone())
    bias = torch.nn.Parameter(b0.clone())
    optimizer = torch.optim.AdamW([weight, bias], lr=learning_rate, weight_decay=1e-4)
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), batch_size):
            batch = order[start : start + batch_size]
            logits = HEAD_SCALE * (x[batch] @ weight.T + bias)
            loss = F.cross_entropy(logits, y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        on_epoch(epoch, total / len(x), weight.detach(), bias.detach())
    return weight.detach().clone(), bias.detach().clone()


def head_predict(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return (x @ weight.T + bias).argmax(dim=1)
