"""One fine-tuning attempt, start to finish, with no Celery and no broker in sight: the task
(workers/training/tasks.py) supplies ``emit`` (publish a job event) and ``cancelled`` (has
the platform cancelled the job?), which keeps this testable in-process.

Step boundaries, where a cancelled job stops: every embedding batch (the int8 variant's
measurement included), every head epoch and every LoRA optimiser step (a LoRA epoch of 500
texts takes ~10 s on 2 cores, too long to wait for a cancel).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from workers.artifacts import ArtifactStore
from workers.contract import (
    HYPERPARAMETER_DEFAULTS,
    INT8_BASE_MODELS,
    Hyperparameters,
    TrainRequest,
    TrainResult,
)
from workers.runtime.encoder import load_encoder
from workers.runtime.finetuned import model_file_write

from . import head as head_method
from . import lora as lora_method
from .data import Rows, rows_load, stratified_split
from .int8 import int8_metrics
from .metrics import classification_metrics

Emit = Callable[..., None]  # emit(type, message, *, level="info", data=None)


class JobCancelledError(Exception):
    """The platform cancelled the job; stop at this step boundary."""


class TrainingDataError(ValueError):
    """The data cannot be trained on (the message is shown to the customer)."""


class JobBudgetError(ValueError):
    """The job is past its budget: ``code`` is the job's error code, the message is shown to
    the customer."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class TrainingDivergedError(ValueError):
    """The loss stopped being a number: the hyperparameters (a learning rate, LoRA's alpha)
    are too large for this data. The message is shown to the customer."""


def _check_loss(epoch: int, loss: float, method: str) -> None:
    if not math.isfinite(loss):
        knobs = "learning_rate or lora_alpha" if method == "lora" else "learning_rate"
        raise TrainingDivergedError(
            f"Training diverged at epoch {epoch}: the loss is {loss}. Lower {knobs} and"
            " start a new job."
        )


@dataclass
class JobContext:
    request: TrainRequest
    store: ArtifactStore
    emit: Emit
    cancelled: Callable[[], bool]
    device: str = "cpu"
    threads: int | None = None
    precision: str = "fp32"  # what the encoder computes in (``WORKER_PRECISION``)
    # time.monotonic() past which the attempt stops (``TrainRequest.time_limit_s``).
    deadline: float | None = None

    def step(self, *, timed: bool = True) -> None:
        """A boundary where the job may stop: cancelled, or (``timed``) past its time limit.
        The boundaries after the work is done are not timed: a job that finished a moment
        past its limit was failed, its model thrown away, after all of its work."""
        if self.cancelled():
            raise JobCancelledError(self.request["job_id"])
        if timed and self.deadline is not None and time.monotonic() >= self.deadline:
            limit = float(self.request.get("time_limit_s") or 0)
            raise JobBudgetError(
                "time_limit_exceeded",
                f"The job reached its time limit of {limit:g} s and was stopped; it is not"
                " billed. Lower epochs or train on fewer examples (a head job costs far less"
                " than a LoRA one) and start a new job.",
            )


def _check_tokens(request: TrainRequest, epochs: int, train_tokens: int) -> None:
    """Before any training: the job's trained tokens, counted exactly (the API refused the
    jobs its estimate put over the budget), against the budget."""
    limit = request.get("max_trained_tokens")
    if limit is not None and epochs * train_tokens > int(limit):
        raise JobBudgetError(
            "token_budget_exceeded",
            f"The job would train {epochs * train_tokens:,} tokens ({train_tokens:,} tokens of"
            f" training examples x {epochs} epochs); a job may train at most {int(limit):,}."
            " It was stopped before training and is not billed. Lower epochs or train on"
            " fewer examples.",
        )


def resolved_hyperparameters(request: TrainRequest) -> Hyperparameters:
    merged: dict[str, Any] = dict(HYPERPARAMETER_DEFAULTS[request["method"]])
    merged.update(request.get("hyperparameters") or {})
    return merged  # type: ignore[return-value]


def train_run(ctx: JobContext) -> TrainResult:
    request = ctx.request
    # LoRA trains through full-precision layers (int8 ones take no gradients): on the int8
    # tier it trains on the same weights in fp32, and is measured as it will be served, with
    # its adapter beside the int8 weights.
    fp32_of = {int8: fp32 for fp32, int8 in INT8_BASE_MODELS.items()}
    int8_lora = request["method"] == "lora" and request["base_model"] in fp32_of
    train_base = fp32_of[request["base_model"]] if int8_lora else request["base_model"]
    hp = resolved_hyperparameters(request)
    began = time.perf_counter()
    seed = int(request.get("seed", 0))
    torch.manual_seed(seed)

    rows = rows_load(ctx.store, request["training_file"])
    validation_file = request.get("validation_file")
    if validation_file:
        train_rows, val_rows = rows, rows_load(ctx.store, validation_file)
    else:
        train_rows, val_rows = stratified_split(rows, seed=seed)
    labels = sorted(set(train_rows.labels))
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted(set(val_rows.labels) - set(index))
    if unknown:
        raise TrainingDataError(f"validation labels not in the training set: {unknown}")
    y_train = torch.tensor([index[x] for x in train_rows.labels])
    y_val = torch.tensor([index[x] for x in val_rows.labels])
    ctx.emit(
        "log",
        f"Training on {len(train_rows)} examples, validating on {len(val_rows)}"
        f"{'' if validation_file else ' (stratified hold-out)'}; {len(labels)} labels.",
        data={"train_examples": len(train_rows), "validation_examples": len(val_rows)},
    )
    if validation_file and validation_file != request["training_file"]:
        _warn_validation_seen(ctx, train_rows, val_rows)
    ctx.step()

    encoder = load_encoder(
        train_base, device=ctx.device, threads=ctx.threads, precision=ctx.precision
    )
    train_tokens = sum(t.tokens for t in encoder.tokenize(train_rows.texts))
    _check_tokens(request, int(hp["epochs"]), train_tokens)
    ctx.step()
    # Embeddings are per dataset file; with a held-out split we embed the whole file once
    # (cached by its hash) and slice it, so the next job on this file reuses all of it.
    all_x, _, cached = head_method.embeddings_get(
        store=ctx.store,
        encoder=encoder,
        owner=request["tenant_id"],
        source=request["training_file"],
        texts=rows.texts,
        step=ctx.step,
    )
    if validation_file:
        x_train = all_x
        x_val, _, _ = head_method.embeddings_get(
            store=ctx.store,
            encoder=encoder,
            owner=request["tenant_id"],
            source=validation_file,
            texts=val_rows.texts,
            step=ctx.step,
        )
    else:
        position = {text: i for i, text in enumerate(rows.texts)}
        x_train = all_x[[position[t] for t in train_rows.texts]]
        x_val = all_x[[position[t] for t in val_rows.texts]]
    ctx.emit(
        "log",
        "Embeddings reused from the cache." if cached else "Embeddings computed and cached.",
        data={"cached": cached},
    )

    head_epochs = int(hp["epochs"]) if request["method"] == "head" else 10

    def head_epoch(epoch: int, loss: float, w: torch.Tensor, b: torch.Tensor) -> None:
        _check_loss(epoch, loss, request["method"])
        accuracy = float((head_method.head_predict(x_val, w, b) == y_val).float().mean())
        if request["method"] == "head":
            ctx.emit(
                "progress",
                f"Epoch {epoch}/{head_epochs}: loss {loss:.4f}, validation accuracy "
                f"{accuracy:.4f}.",
                data={
                    "epoch": epoch,
                    "epochs": head_epochs,
                    "loss": round(loss, 6),
                    "validation_accuracy": round(accuracy, 4),
                },
            )
        ctx.step()

    weight, bias = head_method.head_train(
        x=x_train,
        y=y_train,
        n_labels=len(labels),
        epochs=head_epochs,
        learning_rate=float(hp["learning_rate"]) if request["method"] == "head" else 0.01,
        batch_size=int(hp["batch_size"]) if request["method"] == "head" else 32,
        seed=seed,
        on_epoch=head_epoch,
    )
    lora: dict[str, torch.Tensor] = {}
    if request["method"] == "lora":
        ctx.emit("log", "Head trained on frozen embeddings; training LoRA adapters with it.")
        model, adapters = lora_method.adapted_model(
            encoder,
            targets=list(hp["target_modules"]),
            rank=int(hp["lora_rank"]),
            alpha=float(hp["lora_alpha"]),
            dropout=float(hp["lora_dropout"]),
        )
        epochs = int(hp["epochs"])

        def lora_epoch(epoch: int, loss: float, accuracy: float) -> None:
            _check_loss(epoch, loss, "lora")
            ctx.emit(
                "progress",
                f"Epoch {epoch}/{epochs}: loss {loss:.4f}, validation accuracy {accuracy:.4f}.",
                data={
                    "epoch": epoch,
                    "epochs": epochs,
                    "loss": round(loss, 6),
                    "validation_accuracy": round(accuracy, 4),
                },
            )

        weight, bias = lora_method.lora_train(
            model=model,
            adapters=adapters,
            train_ids=[t.ids for t in encoder.tokenize(train_rows.texts)],
            train_y=y_train,
            val_ids=[t.ids for t in encoder.tokenize(val_rows.texts)],
            val_y=y_val,
            head=(weight, bias),
            epochs=epochs,
            learning_rate=float(hp["learning_rate"]),
            batch_size=int(hp["batch_size"]),
            seed=seed,
            on_epoch=lora_epoch,
            step=ctx.step,
        )
        lora = lora_method.lora_state(adapters)
        x_val = lora_method.embed_with(model, [t.ids for t in encoder.tokenize(val_rows.texts)])

    # NOTE: each epoch's loss was a number; a last step may still have left a weight that is
    # not (and a model that answers NaN would be served, and billed).
    tensors = [weight, bias, *lora.values(), x_val]
    if not all(bool(torch.isfinite(tensor).all()) for tensor in tensors):
        _check_loss(int(hp["epochs"]), float("nan"), request["method"])
    predicted = [labels[i] for i in head_method.head_predict(x_val, weight, bias).tolist()]
    metrics = classification_metrics(val_rows.labels, predicted, labels)
    metrics["validation_examples"] = len(val_rows)
    metrics["train_examples"] = len(train_rows)
    _warn_if_nothing_learned(ctx, metrics, val_rows.labels, len(labels), request["method"])
    ctx.step()
    int8 = int8_metrics(
        store=ctx.store,
        owner=request["tenant_id"],
        base_model=train_base,
        val_source=validation_file or request["training_file"],
        val_texts=val_rows.texts,
        val_labels=val_rows.labels,
        labels=labels,
        head=(weight, bias),
        fp32_predicted=predicted,
        lora=lora,
        lora_rank=int(hp.get("lora_rank", 0)),
        lora_alpha=float(hp.get("lora_alpha", 0.0)),
        step=ctx.step,
        threads=ctx.threads,
    )
    if int8_lora:
        # The model is the int8 one: its metrics are the int8 measurement's; no variant.
        ctx.emit(
            "log",
            f"Measured as served, with the adapter beside the int8 weights: accuracy "
            f"{int8['int8_accuracy']:.4f} ({metrics['accuracy']:.4f} on the fp32 weights it "
            "trained on).",
        )
        metrics.update(
            accuracy=round(int8["int8_accuracy"], 4),
            macro_f1=int8["int8_macro_f1"],
            per_label_f1=int8["int8_per_label_f1"],
        )
    elif int8:
        metrics.update(int8)
        ctx.emit(
            "log",
            f"int8 variant measured on the same validation split: accuracy "
            f"{int8['int8_accuracy']:.4f} against {metrics['accuracy']:.4f} in fp32 "
            f"({int8['int8_accuracy_delta']:+.2f} points).",
            data={k: v for k, v in int8.items() if k != "int8_per_label_f1"},
        )
    # Last boundary: a job cancelled now registers nothing and bills nothing.
    ctx.step(timed=False)
    artifact = ctx.store.put(
        model_file_write(
            base_model=request["base_model"],
            method=request["method"],
            labels=labels,
            head_weight=weight,
            head_bias=bias,
            lora=lora,
            lora_rank=int(hp.get("lora_rank", 0)) if lora else 0,
            lora_alpha=float(hp.get("lora_alpha", 0.0)) if lora else 0.0,
        )
    )
    return {
        "artifact": artifact,
        "labels": labels,
        "metrics": metrics,
        "trained_tokens": int(hp["epochs"]) * train_tokens,
        "compute_ms": round((time.perf_counter() - began) * 1000, 3),
    }


# Validation accuracy within this of always answering the commonest label: learned nothing.
NOTHING_LEARNED_MARGIN = 0.02


def _warn_if_nothing_learned(
    ctx: JobContext, metrics: dict[str, Any], labels: list[str], classes: int, method: str
) -> None:
    """A warning event when the model does no better on its validation split than always
    answering its commonest label, in accuracy and in macro F1 alike (on a split of one
    label at 98 %, a perfect model's accuracy is within 2 points of it, its macro F1 far
    above): the job succeeds (it ran, and is billed, as a fine-tune is), but its caller
    should not take the model for a working one (a LoRA job at a learning rate of 1.0
    ended at 0.25 of 4 labels, "succeeded" without a word)."""
    if not labels:
        return
    label, count = Counter(labels).most_common(1)[0]
    baseline = count / len(labels)
    # Always the commonest label: its F1 is 2p / (1 + p), every other label's 0.
    baseline_f1 = 2 * baseline / (1 + baseline) / max(classes, 1)
    accuracy, macro_f1 = float(metrics["accuracy"]), float(metrics["macro_f1"])
    margin = NOTHING_LEARNED_MARGIN
    if accuracy > baseline + margin or macro_f1 > baseline_f1 + margin:
        return
    advice = "a lower learning_rate" + (" or lora_alpha" if method == "lora" else "")
    ctx.emit(
        "log",
        f"Validation accuracy {accuracy:.4f} is no better than always answering '{label}' "
        f"({baseline:.4f}): the model learned little from this data. Try {advice}, more "
        "epochs, or more (and consistently labelled) examples.",
        level="warning",
        data={"validation_accuracy": round(accuracy, 4), "baseline_accuracy": round(baseline, 4)},
    )


def _warn_validation_seen(ctx: JobContext, train_rows: Rows, val_rows: Rows) -> None:
    """Validation texts that are training texts too measure memory, not how the model does
    on new text: said, with how many (the platform warns of the very same file; another
    file, an export of the same rows, was not said at all)."""
    seen = set(train_rows.texts)
    shared = sum(text in seen for text in val_rows.texts)
    if not shared:
        return
    ctx.emit(
        "log",
        f"{shared} of the {len(val_rows)} validation examples are training examples too: "
        "the validation metrics count them as the model remembers them, not as new text.",
        level="warning",
        data={"validation_examples_in_training": shared},
    )
