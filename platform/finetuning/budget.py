"""A job's budget in trained tokens: epochs x the tokens of its training examples, the
figure it is billed on (``workers/training/runner.py`` counts them exactly and fails a job
over its budget before it trains). At create, without the tokenizer (the control plane
never loads a model), it is estimated from the training file's characters, erring low: a
job is refused only when it is clearly over, and the worker has the last word."""

from __future__ import annotations

import json
import math

from django.conf import settings

from core.artifacts import artifact_store
from core.errors import InvalidRequest
from datasets.models import Dataset

from . import messages

# NOTE: all-MiniLM-L6-v2's WordPiece averages ~4 characters a token on English, [CLS] and
# [SEP] included (3.96-3.97 on tests/data); one in five errs low (a CJK character is a
# token, and the worker's exact count covers it).
CHARS_PER_TOKEN = 5
SPECIAL_TOKENS = 2
ENCODER_WINDOW = 256  # the encoder reads at most this many tokens of a text (MAX_TOKENS)
# Share of each label held out when the job names no validation set (workers VALIDATION_SHARE).
VALIDATION_SHARE = 0.2


def job_token_limit(*, livemode: bool) -> int:
    return int(settings.FINETUNE_MAX_TRAINED_TOKENS)


def _text_tokens(text: str) -> int:
    return min(ENCODER_WINDOW, math.ceil(len(text) / CHARS_PER_TOKEN) + SPECIAL_TOKENS)


def _training_rows(training: Dataset, held_out: bool) -> int:
    """The examples the worker trains on: every row, or those its stratified split keeps."""
    if not held_out:
        return training.rows
    held = sum(min(max(1, round(n * VALIDATION_SHARE)), n - 1) for n in training.labels.values())
    return training.rows - held


def trained_tokens_estimate(*, training: Dataset, held_out: bool, epochs: int) -> int:
    data = artifact_store().get(training.content_file)
    tokens = sum(_text_tokens(json.loads(line)["text"]) for line in data.splitlines() if line)
    rows = max(training.rows, 1)
    return epochs * math.ceil(tokens * _training_rows(training, held_out) / rows)


def check_token_budget(*, training: Dataset, held_out: bool, epochs: int, livemode: bool) -> None:
    """400 ``token_budget_exceeded`` (param ``hyperparameters.epochs``) when the job's
    estimated trained tokens are over the budget of its mode."""
    limit = job_token_limit(livemode=livemode)
    # Cheap first: within the budget even were every text as long as the encoder reads.
    if epochs * training.rows <= limit // ENCODER_WINDOW:
        return
    estimate = trained_tokens_estimate(training=training, held_out=held_out, epochs=epochs)
    if estimate > limit:
        raise InvalidRequest(
            messages.TRAINED_TOKENS_OVER.format(
                estimate=estimate,
                examples=_training_rows(training, held_out),
                epochs=epochs,
                limit=limit,
            ),
            code="token_budget_exceeded",
            param="hyperparameters.epochs",
        )
