"""A job's budget in trained tokens: epochs x the tokens of its training examples, the
figure it is billed on (``workers/training/runner.py`` counts them exactly and fails a job
over its budget before it trains). At create, without the tokenizer (the control plane
never loads a model), it is estimated from the training file's characters, erring low: a
job is refused only when it is clearly over, and the worker has the last word.

Test mode (``sk_test_`` keys) is never billed, so it has budgets of its own, whatever the
plan: a smaller token budget per job, and a number of jobs per tenant per UTC day."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.utils import timezone

from core.artifacts import artifact_store
from core.errors import APIError, InvalidRequest
from datasets.models import Dataset
from workers.contract import MAX_TEXT_TOKENS, held_out_rows

from . import messages
from .models import FineTuneJob

# NOTE: all-MiniLM-L6-v2's WordPiece averages ~4 characters a token on English, [CLS] and
# [SEP] included (3.96-3.97 on tests/data); one in five errs low (a CJK character is a
# token, and the worker's exact count covers it).
CHARS_PER_TOKEN = 5
SPECIAL_TOKENS = 2


def job_token_limit(*, livemode: bool) -> int:
    limit = int(settings.FINETUNE_MAX_TRAINED_TOKENS)
    if livemode:
        return limit
    return min(limit, int(settings.FINETUNE_TEST_MODE_MAX_TRAINED_TOKENS))


# WordPiece reads a word longer than this as one token ([UNK]): a hash, an id, base64.
MAX_WORD_CHARS = 100


def _text_tokens(text: str) -> int:
    """A text's tokens, erring low: a character count over ``CHARS_PER_TOKEN``, except that
    a word the tokenizer reads as one unknown token counts one (200 texts of one 128-digit
    hex word each were estimated at 28 tokens a text where the tokenizer makes 3, and the
    job refused at 9x its size)."""
    chars = 0
    unknown = 0
    for word in text.split():
        if len(word) > MAX_WORD_CHARS:
            unknown += 1
        else:
            chars += len(word) + 1
    return min(MAX_TEXT_TOKENS, math.ceil(chars / CHARS_PER_TOKEN) + unknown + SPECIAL_TOKENS)


def _training_rows(training: Dataset, held_out: bool) -> int:
    """The examples the worker trains on: every row, or those its stratified split keeps."""
    if not held_out:
        return training.rows
    held = sum(held_out_rows(n) for n in training.labels.values())
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
    if epochs * training.rows <= limit // MAX_TEXT_TOKENS:
        return
    estimate = trained_tokens_estimate(training=training, held_out=held_out, epochs=epochs)
    if estimate > limit:
        raise InvalidRequest(
            messages.TRAINED_TOKENS_OVER.format(
                estimate=estimate,
                examples=_training_rows(training, held_out),
                epochs=epochs,
                limit=limit,
                mode="" if livemode else " in test mode",
            ),
            code="token_budget_exceeded",
            param="hyperparameters.epochs",
        )


def check_test_mode_jobs(*, tenant_id: str, now: datetime | None = None) -> None:
    """429 ``test_mode_fine_tune_limit`` once the tenant's test-mode jobs created this UTC
    day reach ``FINETUNE_TEST_MODE_DAILY_JOBS`` (every one counts, whatever its end: a job
    cancelled at once still took a create), ``Retry-After`` the seconds to midnight UTC.

    WARNING: call it with the tenant's row locked, in the transaction that creates the job
    (``fine_tune_create``), as ``_check_plan``: parallel creates must not all pass it."""
    now = now or timezone.now()
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    limit = int(settings.FINETUNE_TEST_MODE_DAILY_JOBS)
    made = (
        FineTuneJob.objects.for_tenant(tenant_id)
        .filter(livemode=False, created_at__gte=day)
        .count()
    )
    if made >= limit:
        wait = math.ceil((day + timedelta(days=1) - now).total_seconds())
        raise APIError(
            messages.TEST_MODE_DAILY.format(limit=limit),
            code="test_mode_fine_tune_limit",
            status=429,
            headers={"Retry-After": str(max(1, wait))},
        )
