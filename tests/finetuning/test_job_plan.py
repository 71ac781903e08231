"""A fine-tuning job is billed on the plan that admitted it: a tenant that moved to free
while its job ran had it for nothing."""

from __future__ import annotations

import pytest

from billing.models import Subscription
from finetuning.events import fine_tune_event_apply
from plans.models import Plan
from tests.finetuning.test_events import event, ledger, succeeded

pytestmark = pytest.mark.django_db


def test_a_job_is_billed_on_the_plan_it_was_admitted_on(job, tenant):
    pro = Plan.objects.get(slug="pro", is_current=True)
    assert job.plan_id == pro.pk
    fine_tune_event_apply(event=event(job, 1, "started"))
    free = Plan.objects.get(slug="free", is_current=True)
    Subscription.objects.for_tenant(tenant).update(plan=free)  # moved to free meanwhile
    assert fine_tune_event_apply(event=succeeded(job, seq=2))
    (row,) = ledger(job)
    assert (row.kind, row.plan_id) == ("fine_tune", pro.pk)
