"""A fine-tuned model's id is the job's to keep: 12 characters of its id, case kept (8
lower-cased ones made two jobs' models meet, at scale), and a succeeded job never takes over
a model of another tenant or mode under the id it derives."""

from __future__ import annotations

import pytest

from finetuning.events import fine_tune_event_apply, fine_tune_event_refused
from finetuning.models import FineTuneJob
from finetuning.registration import ModelIdTaken, model_id_for
from inference.models import AIModel
from tests.factories import TenantFactory
from tests.finetuning.test_events import event, reload, succeeded

pytestmark = pytest.mark.django_db


def test_the_model_id_keeps_twelve_characters_of_the_job_id_case_and_all(job):
    assert model_id_for(job) == f"ft:minilm-l6:tickets:{job.id.removeprefix('ftjob_')[:12]}"


def test_the_model_id_has_four_parts_without_a_suffix_too(job):
    """Three, before: a client reading the parts by place took the id for the suffix."""
    job.suffix = ""
    token = job.id.removeprefix("ftjob_")[:12]
    assert model_id_for(job) == f"ft:minilm-l6::{token}"
    assert model_id_for(job).split(":") == ["ft", "minilm-l6", "", token]


def test_a_model_without_a_suffix_is_reached_by_its_id(job, tenant, api):
    job.suffix = ""
    AIModel.objects.create(
        id=model_id_for(job), tenant=tenant, kind="fine_tuned", base_model="minilm-l6",
        labels=["x", "y"], artifact="b" * 64, livemode=job.livemode,
    )  # fmt: skip
    found = api.get(f"/v1/models/{model_id_for(job)}")
    assert found.status_code == 200 and found.json()["id"] == model_id_for(job)
    assert api.delete(f"/v1/models/{model_id_for(job)}").status_code == 200


def test_a_job_never_takes_over_another_tenants_model_under_its_id(job):
    other = TenantFactory()
    theirs = AIModel.objects.unscoped().create(
        id=model_id_for(job), tenant=other, livemode=True, kind="fine_tuned",
        base_model="minilm-l6", labels=["x", "y"], artifact="b" * 64,
    )  # fmt: skip
    fine_tune_event_apply(event=event(job, 1, "started"))
    with pytest.raises(ModelIdTaken):
        fine_tune_event_apply(event=succeeded(job, seq=2))
    # What the events consumer does with an event it cannot store: the job fails, unbilled.
    assert fine_tune_event_refused(event=succeeded(job, seq=2))
    failed = reload(job)
    assert (failed.status, failed.error["code"]) == (FineTuneJob.Status.FAILED, "internal")
    kept = AIModel.objects.unscoped().get(pk=theirs.pk)
    assert (kept.tenant_id, kept.artifact) == (other.pk, "b" * 64)
