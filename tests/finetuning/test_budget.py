"""A job's budget at create (finetuning/budget.py): its trained tokens, estimated from the
training file, over FINETUNE_MAX_TRAINED_TOKENS are a 400 naming epochs; the request sent to
the worker carries the budget it enforces exactly (tests/workers/training)."""

from __future__ import annotations

import pytest

from core.artifacts import artifact_store
from finetuning.budget import trained_tokens_estimate
from finetuning.models import FineTuneJob
from tests.finetuning.test_api import assert_error, create
from tests.finetuning.test_dispatch import sent_requests
from workers.runtime.encoder import load_encoder
from workers.training.data import rows_load, stratified_split

pytestmark = pytest.mark.django_db


def test_a_job_estimated_over_the_token_budget_is_a_400_naming_epochs(
    api, tenant, make_dataset, settings
):
    dataset = make_dataset(tenant)  # 60 tickets: ~1,100 tokens trained on an epoch
    settings.FINETUNE_MAX_TRAINED_TOKENS = 5_000
    refused = create(api, base_model="minilm-l6", training_dataset=dataset.id,
                     hyperparameters={"epochs": 10})  # fmt: skip
    assert_error(refused, 400, "token_budget_exceeded", "hyperparameters.epochs")
    error = refused.json()["error"]
    assert error["type"] == "invalid_request"
    assert "47 training examples x 10 epochs" in error["message"], error
    assert "at most 5,000" in error["message"]
    assert not FineTuneJob.objects.for_tenant(tenant).exists()
    # Fewer epochs fit.
    made = create(api, base_model="minilm-l6", training_dataset=dataset.id,
                  hyperparameters={"epochs": 2})  # fmt: skip
    assert made.status_code == 201, made.content


def test_the_worker_is_sent_the_budget(
    api, tenant, make_dataset, settings, django_capture_on_commit_callbacks
):
    settings.FINETUNE_MAX_TRAINED_TOKENS, settings.FINETUNE_TIME_LIMIT_S = 123_456, 60.0
    with django_capture_on_commit_callbacks(execute=True):
        made = create(api, base_model="minilm-l6", training_dataset=make_dataset(tenant).id)
    assert made.status_code == 201, made.content
    [request] = sent_requests()
    assert (request["max_trained_tokens"], request["time_limit_s"]) == (123_456, 60.0)


@pytest.mark.parametrize("name", ["support_tickets.jsonl", "product_reviews.jsonl"])
@pytest.mark.parametrize("held_out", [True, False])
def test_the_estimate_errs_low_but_not_far(tenant, make_dataset, name, held_out):
    """A job is refused at create only when the worker would count it over too."""
    from tests.finetuning.conftest import read_rows

    dataset = make_dataset(tenant, read_rows(name))
    rows = rows_load(artifact_store(), dataset.content_file)
    train = stratified_split(rows, seed=0)[0] if held_out else rows
    encoder = load_encoder("minilm-l6", device="cpu", threads=1, precision="fp32")
    exact = 3 * sum(t.tokens for t in encoder.tokenize(train.texts))
    estimate = trained_tokens_estimate(training=dataset, held_out=held_out, epochs=3)
    assert 0.7 * exact <= estimate <= exact, (estimate, exact)


def test_words_the_tokenizer_reads_as_one_unknown_token_count_one(tenant, make_dataset):
    """Hashes and ids longer than WordPiece reads become one [UNK] each: the estimate counts
    them so, not by their characters (a job 9x under its budget was refused)."""
    import hashlib

    rows = [
        {"text": hashlib.sha512(str(n).encode()).hexdigest(), "label": "ab"[n % 2]}
        for n in range(200)
    ]
    dataset = make_dataset(tenant, rows)
    encoder = load_encoder("minilm-l6", device="cpu", threads=1, precision="fp32")
    exact = sum(t.tokens for t in encoder.tokenize([row["text"] for row in rows]))
    estimate = trained_tokens_estimate(training=dataset, held_out=False, epochs=1)
    assert exact == 600 and 0.7 * exact <= estimate <= exact, (estimate, exact)
