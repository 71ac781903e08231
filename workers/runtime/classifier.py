"""The classification engine: zero-shot over label texts and few-shot over examples, on top
of a shared encoder and its dynamic batcher.

Scoring: cosine similarity between an input and each class vector, then a softmax at
temperature 0.05. all-MiniLM-L6-v2 was trained with a contrastive loss at exactly that
scale (x20), so these probabilities are the model's own notion of "which of these fits".
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workers import errors
from workers.artifacts import ArtifactMissingError, ArtifactStore
from workers.contract import (
    CONTRACT_VERSION,
    ClassificationRow,
    ClassifyRequest,
    ClassifyResult,
)
from workers.runtime.batcher import DynamicBatcher, Embedded
from workers.runtime.cache import EmbeddingCache
from workers.runtime.checks import InvalidRequestError, check_inputs, check_request
from workers.runtime.encoder import Encoder, Tokenized, UnknownModelError, load_encoder
from workers.runtime.finetuned import FineTunedCache, ModelFileError
from workers.settings import WorkerSettings, get_settings, int_setting

# Measured on hand-labelled sentiment, topic and support-ticket texts: this template got
# 29/32 right against 27/32 for the bare label and 28/32 for "This is {label}.".
LABEL_TEMPLATE = "This text is about {label}."
TEMPERATURE = 0.05
SCORE_DECIMALS = 6
# Fine-tuned models kept loaded per worker (LRU). A head is ~6 KB; a LoRA adapter laid out
# for serving is ~37 KB x rank x targets (query, key, value): 0.6-0.9 MB at rank 8, at most
# 7 MB (rank 64, three targets). 64 of them: ~60 MB typically, 450 MB at the very worst.
FINE_TUNED_CACHE_SIZE = int_setting(os.environ, "WORKER_FINE_TUNED_CACHE_SIZE", 64, 1)
# A waiting request gives up after this long if the model thread is stuck or overloaded.
EMBED_TIMEOUT_S = 120.0
OVERDUE = "The request passed its deadline before its texts were embedded."


logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Runtime:
    encoder: Encoder
    batcher: DynamicBatcher


@dataclass(frozen=True, slots=True)
class Begun:
    """A request whose texts are queued on the batcher: ``finish`` waits for ``futures``
    (its texts' embeddings) and builds the result; once they are done it does not block."""

    futures: Sequence[Future[Embedded]]
    finish: Callable[[], ClassifyResult]

    def ready(self) -> bool:
        return all(future.done() for future in self.futures)


def _done(result: ClassifyResult) -> Begun:
    """A result that needs no waiting, in ``ClassifierEngine.begin``'s shape."""
    return Begun((), lambda: result)


def _distribution(probs: Sequence[float], labels: Sequence[str]) -> tuple[int, dict[str, float]]:
    """Round to SCORE_DECIMALS and put the rounding residue on the top label, so the
    rounded scores still sum to 1 (within 1e-6) whatever the number of labels; the label
    is the largest score as shown (the top one on a tie). NOTE: a residue taken from the top
    label could leave it below a near-tied one, still named the label (an audit: 'billing'
    0.499882 beside 'payments' 0.499883)."""
    top = max(range(len(probs)), key=probs.__getitem__)
    rounded = [round(p, SCORE_DECIMALS) for p in probs]
    rounded[top] = round(1.0 - (sum(rounded) - rounded[top]), SCORE_DECIMALS)
    shown = max(range(len(rounded)), key=lambda i: (rounded[i], i == top))
    return shown, dict(zip(labels, rounded, strict=True))


class ClassifierEngine:
    """Thread-safe; one per process (see ``get_engine``)."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.cache = EmbeddingCache(settings.embed_cache_size)
        self._runtimes: dict[str, _Runtime] = {}
        self.fine_tuned = FineTunedCache(FINE_TUNED_CACHE_SIZE, ArtifactStore().get)
        self._lock = threading.Lock()

    def _batcher(self, encoder: Encoder, name: str) -> DynamicBatcher:
        s = self.settings
        # A GPU runs one forward at a time: side-by-side forwards are a CPU layout.
        model_threads = s.model_threads if encoder.device.type == "cpu" else 1
        tokens, rows = s.batch_limits(encoder.device.type)
        return DynamicBatcher(
            encoder.embed_ids,
            max_batch_tokens=tokens,
            max_batch_size=rows,
            max_wait_ms=s.max_wait_ms,
            name=name,
            model_threads=model_threads,
        )

    def runtime(self, base_model: str) -> _Runtime:
        """The encoder and batcher for ``base_model``, loaded on first use."""
        with self._lock:
            runtime = self._runtimes.get(base_model)
            if runtime is None:
                s = self.settings
                encoder = load_encoder(
                    base_model,
                    device=s.device,
                    threads=s.inference_torch_threads,
                    precision=s.precision,
                )
                batcher = self._batcher(encoder, f"batcher-{base_model}")
                runtime = self._runtimes[base_model] = _Runtime(encoder, batcher)
            return runtime

    def loaded(self) -> dict[str, _Runtime]:
        """The base models loaded so far, with their encoders and batchers."""
        with self._lock:
            return dict(self._runtimes)

    def close(self) -> None:
        with self._lock:
            runtimes, self._runtimes = list(self._runtimes.values()), {}
        for runtime in runtimes:
            runtime.batcher.close()

    def classify(self, request: ClassifyRequest) -> ClassifyResult:
        return self.begin(request).finish()

    def classify_as_done(
        self, requests: Sequence[ClassifyRequest], *, timeout: float = EMBED_TIMEOUT_S
    ) -> Iterator[list[tuple[int, ClassifyResult | Exception]]]:
        """Several requests at once (one coalesced message), answered as they complete:
        every request's texts are queued before any is waited for, so they share forward
        passes, and each time some requests' texts are all embedded those requests are
        yielded, as ``(index in requests, result)``. A request that fails gets its
        exception; the others are still answered. Nothing waits for a slower neighbour: a
        one-input call coalesced with a 96-input one used to wait for all 96. Measured under
        32 one-input clients, from a request's last text embedded to its answer sent: 32 ms
        on average when the whole message was waited for, 8 ms answering as done."""
        pending: dict[int, Begun] = {}
        failed: list[tuple[int, ClassifyResult | Exception]] = []
        for index, request in enumerate(requests):
            try:
                pending[index] = self.begin(request)
            except Exception as exc:
                failed.append((index, exc))
        if failed:
            yield failed
        give_up = time.monotonic() + timeout
        while pending:
            ready = [index for index, begun in pending.items() if begun.ready()]
            # Past its deadline, a request's caller has given up (503, unbilled): its texts
            # still waiting are dropped from the batcher, not computed for nobody (a tenant's
            # 256-example calls, timed out, went on taking the worker for up to 30 s each).
            now = time.time()
            overdue = [i for i in pending if i not in ready and now > requests[i]["deadline"]]
            if overdue:
                for index in overdue:
                    for future in pending.pop(index).futures:
                        future.cancel()  # (one already in a forward pass finishes)
                yield [
                    (i, errors.error_result(requests[i], errors.EXPIRED, OVERDUE)) for i in overdue
                ]
                continue
            if not ready:
                left = give_up - time.monotonic()
                soonest = min(requests[i]["deadline"] for i in pending) - now
                waiting = [f for begun in pending.values() for f in begun.futures if not f.done()]
                if (
                    left > 0
                    and wait(
                        waiting, timeout=max(min(left, soonest), 0.001), return_when=FIRST_COMPLETED
                    ).done
                ):
                    continue
                if time.monotonic() < give_up:
                    continue  # a deadline passed: the loop drops its request
                stuck = TimeoutError(f"texts not embedded within {timeout:.0f} s")
                yield [(index, stuck) for index in pending]
                return
            group: list[tuple[int, ClassifyResult | Exception]] = []
            for index in ready:
                try:
                    group.append((index, pending.pop(index).finish()))
                except Exception as exc:
                    group.append((index, exc))
            yield group

    def begin(self, request: ClassifyRequest) -> Begun:
        """Check the request and queue its texts on the batcher; the returned ``finish``
        waits for them and builds the result."""
        if request.get("artifact"):
            return self._begin_fine_tuned(request)
        try:
            label_set, examples = check_request(request)
        except InvalidRequestError as exc:
            return _done(errors.error_result(request, errors.INVALID_REQUEST, str(exc)))
        base_model = request.get("base_model", "")
        try:
            runtime = self.runtime(base_model)
        except UnknownModelError:
            message = errors.MODEL_UNAVAILABLE_MESSAGE.format(model=base_model)
            return _done(errors.error_result(request, errors.MODEL_UNAVAILABLE, message))

        encoder, inputs = runtime.encoder, request["inputs"]
        with_examples = {label for _, label in examples}
        alike = _prompts_alike(encoder, label_set, with_examples)
        if alike is not None:  # their scores would split one class's 50/50
            index, first = alike
            message = errors.DUPLICATE_LABEL_MESSAGE.format(
                index=index, label=label_set[index], first=first, other=label_set[first]
            )
            return _done(
                errors.error_result(request, errors.DUPLICATE_LABEL, message, f"labels[{index}]")
            )
        # Texts whose embeddings are cacheable: the label prompts of labels that have no
        # examples, and the example texts. Looked up first; only misses are computed.
        class_texts = [LABEL_TEMPLATE.format(label=x) for x in label_set if x not in with_examples]
        class_texts += [text for text, _ in examples]
        known: dict[str, torch.Tensor] = {}
        # Per tenant: a hit is faster (compute_ms says so), and one tenant must not learn
        # which labels or examples another sends.
        owner = str(request.get("tenant_id") or "")
        for text in dict.fromkeys(class_texts):
            vector = self.cache.get((encoder.encoder_id, owner, text))
            if vector is not None:
                known[text] = vector
        missing = [text for text in dict.fromkeys(class_texts) if text not in known]

        tokenized = encoder.tokenize(list(inputs) + missing)
        # One submission, so inputs and missing class texts share forward passes.
        futures = runtime.batcher.submit_many([t.ids for t in tokenized], owner=owner)

        def finish() -> ClassifyResult:
            embedded = [future.result(timeout=EMBED_TIMEOUT_S) for future in futures]
            compute_ms = sum(e.compute_ms for e in embedded)
            for text, e in zip(missing, embedded[len(inputs) :], strict=True):
                # clone(): the vector is a view of its whole batch's output, which a cache
                # entry would otherwise keep alive.
                known[text] = e.vector.clone()
                self.cache.put((encoder.encoder_id, owner, text), known[text])

            classes = torch.stack([self._class_vector(x, examples, known) for x in label_set])
            vectors = torch.stack([e.vector for e in embedded[: len(inputs)]])
            probs = torch.softmax((vectors @ classes.T).double() / TEMPERATURE, dim=1).tolist()
            return self._result(request, probs, label_set, tokenized[: len(inputs)], compute_ms)

        return Begun(futures, finish)

    def _begin_fine_tuned(self, request: ClassifyRequest) -> Begun:
        """A tenant's fine-tuned model: its head over the encoder's embedding. Every one
        rides the base encoder's batcher with every other request; a LoRA model's rows carry
        its adapter into the shared forward passes (finetuned.py says how)."""
        try:
            check_inputs(request)
        except InvalidRequestError as exc:
            return _done(errors.error_result(request, errors.INVALID_REQUEST, str(exc)))
        base_model, artifact = request.get("base_model", ""), str(request.get("artifact"))
        try:
            # A model's int8 variant names the int8 base model: it rides that model's
            # batcher, a LoRA adapter laid out for the int8 body (finetuned.py).
            loaded = self.fine_tuned.get(
                artifact, lambda name: self.runtime(name).encoder.model, base_model=base_model
            )
            runtime = self.runtime(base_model)
        except (ArtifactMissingError, ModelFileError, UnknownModelError):
            logger.exception("fine-tuned model %s (%s) unavailable", request["model"], artifact)
            message = errors.MODEL_UNAVAILABLE_MESSAGE.format(model=request["model"])
            return _done(errors.error_result(request, errors.MODEL_UNAVAILABLE, message))
        tokenized = runtime.encoder.tokenize(list(request["inputs"]))
        owner = str(request.get("tenant_id") or "")  # whose turn its texts take (batcher)
        futures = runtime.batcher.submit_many(
            [t.ids for t in tokenized], tag=loaded.adapter, owner=owner
        )

        def finish() -> ClassifyResult:
            embedded = [future.result(timeout=EMBED_TIMEOUT_S) for future in futures]
            vectors = torch.stack([e.vector for e in embedded])
            compute_ms = sum(e.compute_ms for e in embedded)
            probs = torch.softmax(loaded.model.logits(vectors).double(), dim=1).tolist()
            return self._result(request, probs, loaded.model.labels, tokenized, compute_ms)

        return Begun(futures, finish)

    @staticmethod
    def _result(
        request: ClassifyRequest,
        probs: list[list[float]],
        label_set: Sequence[str],
        tokenized: Sequence[Tokenized],
        compute_ms: float,
    ) -> ClassifyResult:
        rows: list[ClassificationRow] = []
        for index, p in enumerate(probs):
            top, scores = _distribution(p, label_set)
            rows.append(
                {
                    "index": index,
                    "label": label_set[top],
                    "score": scores[label_set[top]],
                    "scores": scores,
                    "truncated": tokenized[index].truncated,
                }
            )
        return {
            "v": CONTRACT_VERSION,
            "request_id": request["request_id"],
            "model": request["model"],
            "results": rows,
            # Per input, for the result cache (a hit is metered with the tokens it replaces).
            "row_tokens": [t.tokens for t in tokenized[: len(probs)]],
            "usage": {
                "inputs": len(probs),
                "tokens": sum(t.tokens for t in tokenized),
                "compute_ms": round(compute_ms, 3),
                "cached": 0,
            },
        }

    @staticmethod
    def _class_vector(
        label: str, examples: Sequence[tuple[str, str]], known: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """A label's examples' normalised centroid, or its prompt's embedding if it has none."""
        own = [known[text] for text, x in examples if x == label]
        if not own:
            return known[LABEL_TEMPLATE.format(label=label)]
        return F.normalize(torch.stack(own).mean(dim=0), dim=0)


def _prompts_alike(
    encoder: Encoder, labels: Sequence[str], with_examples: set[str]
) -> tuple[int, int] | None:
    """(index, earlier index) of the first label embedded from its prompt whose prompt the
    tokenizer reads as an earlier one's (the same token ids: ``Coffee`` and ``coffee``, two
    emoji outside the vocabulary). None if there is none.

    NOTE: decided on the token ids, exactly, not on the embeddings: those move with the
    batch a prompt rides in and with the numerics (int8 quantises activations per forward
    pass: a prompt's cached vector and a fresh one of the same ids were 0.995 apart), so
    a label whose prompt came from the cache passed as a second class."""
    prompted = [i for i, label in enumerate(labels) if label not in with_examples]
    if len(prompted) < 2:
        return None
    first_of: dict[tuple[int, ...], int] = {}
    for index in prompted:
        ids = encoder.prompt_ids(LABEL_TEMPLATE.format(label=labels[index]))
        first = first_of.setdefault(ids, index)
        if first != index:
            return index, first
    return None


_engine: ClassifierEngine | None = None
_engine_pid = 0
_engine_lock = threading.Lock()


def get_engine() -> ClassifierEngine:
    """The process-wide engine, created once. A forked child builds its own: the parent's
    batcher thread does not survive a fork."""
    global _engine, _engine_pid
    with _engine_lock:
        if _engine is None or _engine_pid != os.getpid():
            _engine, _engine_pid = ClassifierEngine(get_settings()), os.getpid()
        return _engine
