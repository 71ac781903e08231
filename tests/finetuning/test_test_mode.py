"""Test-mode fine-tunes (sk_test_ keys, never billed) have budgets of their own: at most
FINETUNE_TEST_MODE_DAILY_JOBS jobs per tenant per UTC day (429 with Retry-After), and the
smaller FINETUNE_TEST_MODE_MAX_TRAINED_TOKENS per job (400, as the live budget)."""

from __future__ import annotations

import contextlib
from datetime import timedelta

import pytest
from django.utils import timezone

from finetuning.models import FineTuneJob
from tests.factories import TenantFactory, make_key, subscribe
from tests.finetuning.test_api import assert_error, create, create_at_once
from tests.finetuning.test_dispatch import sent_requests

pytestmark = pytest.mark.django_db


def test_test_mode_jobs_are_limited_per_day_and_live_ones_are_not(
    tenant, client_for, make_dataset, settings
):
    settings.FINETUNE_TEST_MODE_DAILY_JOBS = 2
    test, live = client_for(tenant, ["training"], "test"), client_for(tenant, ["training"])
    dataset = make_dataset(tenant).id
    made = [create(test, base_model="minilm-l6", training_dataset=dataset) for _ in range(2)]
    assert [r.status_code for r in made] == [201, 201]
    # Cancelled at once, it still counts: creates are what is limited.
    assert test.post(f"/v1/fine-tunes/{made[0].json()['id']}/cancel").status_code == 200
    refused = create(test, base_model="minilm-l6", training_dataset=dataset)
    assert_error(refused, 429, "test_mode_fine_tune_limit")
    assert refused.json()["error"]["type"] == "rate_limited"
    assert "2 fine-tuning jobs a day" in refused.json()["error"]["message"]
    assert 1 <= int(refused["Retry-After"]) <= 24 * 3600
    assert FineTuneJob.objects.for_tenant(tenant).count() == 2
    # Live keys are billed: not held to it.
    assert create(live, base_model="minilm-l6", training_dataset=dataset).status_code == 201
    # Another UTC day, another allowance.
    FineTuneJob.objects.for_tenant(tenant).filter(livemode=False).update(
        created_at=timezone.now() - timedelta(days=1)
    )
    assert create(test, base_model="minilm-l6", training_dataset=dataset).status_code == 201


def test_a_test_mode_job_has_the_smaller_token_budget(
    tenant, client_for, make_dataset, settings, django_capture_on_commit_callbacks
):
    settings.FINETUNE_TEST_MODE_MAX_TRAINED_TOKENS = 5_000  # 60 tickets: ~1,100 an epoch
    test, live = client_for(tenant, ["training"], "test"), client_for(tenant, ["training"])
    body = {"base_model": "minilm-l6", "training_dataset": make_dataset(tenant).id,
            "hyperparameters": {"epochs": 10}}  # fmt: skip
    refused = create(test, **body)
    assert_error(refused, 400, "token_budget_exceeded", "hyperparameters.epochs")
    assert "at most 5,000 in test mode" in refused.json()["error"]["message"]
    with django_capture_on_commit_callbacks(execute=True):
        assert create(live, **body).status_code == 201
        made = create(test, **{**body, "hyperparameters": {"epochs": 2}})
        assert made.status_code == 201
    from finetuning import dispatch

    with django_capture_on_commit_callbacks(execute=True):
        # The live job ends: the test one, waiting for the slot, is sent with its budget.
        dispatch.job_fail(
            FineTuneJob.objects.for_tenant(tenant).get(livemode=True).id, code="x", message="x"
        )
    budgets = {r["livemode"]: r["max_trained_tokens"] for r in sent_requests()}
    assert budgets == {True: settings.FINETUNE_MAX_TRAINED_TOKENS, False: 5_000}


def test_the_daily_limit_holds_under_concurrent_creates(transactional_db, monkeypatch, settings):
    """Four test-mode creates at once for the last two of the day: exactly two jobs. Each
    waits, once it has counted, for the others to count too (or a second: they are then
    waiting for its lock on the tenant's row)."""
    import threading

    from django.core.files.uploadedfile import SimpleUploadedFile

    from datasets.services import dataset_create
    from finetuning import budget, services
    from tests.finetuning.conftest import read_rows, rows_file

    settings.FINETUNE_TEST_MODE_DAILY_JOBS = 2
    tenant = TenantFactory()
    subscribe(tenant, "pro")
    rows = read_rows("support_tickets.jsonl")[:60]
    dataset = dataset_create(tenant=tenant, upload=SimpleUploadedFile("d.jsonl", rows_file(rows)))
    secret = make_key(tenant, ["training"], "test")
    all_counted = threading.Barrier(4, timeout=1)
    check = budget.check_test_mode_jobs

    def check_then_wait(**kwargs):
        try:
            check(**kwargs)
        finally:
            with contextlib.suppress(threading.BrokenBarrierError):
                all_counted.wait()

    monkeypatch.setattr(services, "check_test_mode_jobs", check_then_wait)

    responses = create_at_once(secret, dataset.id)
    assert sorted(r.status_code for r in responses) == [201, 201, 429, 429], [
        r.content for r in responses
    ]
    assert FineTuneJob.objects.for_tenant(tenant).count() == 2
