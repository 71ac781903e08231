"""A plan's fine-tuned model limit holds under concurrent creates."""

from __future__ import annotations

import contextlib

import pytest

from finetuning.models import FineTuneJob
from inference.models import AIModel
from tests.factories import TenantFactory, make_key, subscribe
from tests.finetuning.conftest import read_rows
from tests.finetuning.test_api import assert_error, create_at_once

pytestmark = pytest.mark.django_db


def test_the_model_limit_holds_under_concurrent_creates(transactional_db, monkeypatch):
    """Four creates at once for the last two slots of a plan: exactly two jobs. Each create,
    once it has counted, waits for the others to count too (or a second: they are then
    waiting for its lock), which is how parallel requests all passed the count before the
    count and the insert were made atomic. NOTE: it guards the tenant lock on PostgreSQL
    (CI); on SQLite, IMMEDIATE transactions serialise the creates with or without it."""
    import threading

    from django.core.files.uploadedfile import SimpleUploadedFile

    from datasets.services import dataset_create
    from finetuning import dispatch, services
    from tests.finetuning.conftest import rows_file

    tenant = TenantFactory()
    subscribe(tenant, "pro")  # 10 fine-tuned models
    for n in range(8):
        AIModel.objects.create(
            id=f"ft:minilm-l6:m:{n}", tenant=tenant, kind="fine_tuned", base_model="minilm-l6"
        )
    rows = read_rows("support_tickets.jsonl")[:60]
    dataset = dataset_create(tenant=tenant, upload=SimpleUploadedFile("d.jsonl", rows_file(rows)))
    secret = make_key(tenant, ["training"])
    # Nothing goes to the training queue: this is about admission, not training.
    monkeypatch.setattr(dispatch, "job_enqueue_on_commit", lambda job, **_: None)
    all_counted = threading.Barrier(4, timeout=1)
    check = services._check_plan

    def check_then_wait(**kwargs):
        plan_id = check(**kwargs)
        with contextlib.suppress(threading.BrokenBarrierError):
            all_counted.wait()
        return plan_id

    monkeypatch.setattr(services, "_check_plan", check_then_wait)

    responses = create_at_once(secret, dataset.id)
    assert sorted(r.status_code for r in responses) == [201, 201, 402, 402], [
        r.content for r in responses
    ]
    for refused in (r for r in responses if r.status_code == 402):
        assert_error(refused, 402, "fine_tuned_model_limit")
    assert FineTuneJob.objects.for_tenant(tenant).count() == 2
