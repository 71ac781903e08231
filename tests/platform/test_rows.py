"""``core.rows``: the per-request lookups written as one SELECT must return what the ORM
returns, field for field (the API-key lookup has its own test in test_apikeys.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from core.errors import NotFound
from inference.models import AIModel
from inference.selectors import model_get_visible
from tests.factories import TenantFactory

pytestmark = pytest.mark.django_db


def test_a_fine_tuned_model_is_read_as_the_orm_reads_it(tenant):
    parent = AIModel.objects.create(
        id="ft:minilm-l6:rows:0a1b2c3d", tenant=tenant, kind="fine_tuned",
        base_model="minilm-l6", labels=["a", "b"], description="tickets",
        metrics={"accuracy": 0.95, "per_label_f1": {"a": 0.9, "b": 1.0}},
        artifact="f" * 64,
    )  # fmt: skip
    variant = AIModel.objects.create(
        id="ft:minilm-l6-int8:rows:0a1b2c3d", tenant=tenant, kind="fine_tuned",
        base_model="minilm-l6-int8", labels=["a", "b"], metrics={"accuracy": 0.945},
        artifact="f" * 64, parent=parent, accuracy_delta=-0.5,
    )  # fmt: skip
    for model in (parent, variant):
        expected = AIModel.objects.visible_to(tenant.pk, True).get(pk=model.pk)
        found = model_get_visible(tenant=tenant, model_id=model.pk, livemode=True)
        for field in AIModel._meta.concrete_fields:
            assert getattr(found, field.attname) == getattr(expected, field.attname), field.name
        assert found._state.adding is False and found._state.db == expected._state.db


def test_only_the_owner_sees_a_live_fine_tuned_model(tenant):
    model = AIModel.objects.create(
        id="ft:minilm-l6:rows:4e5f6a7b", tenant=tenant, kind="fine_tuned",
        base_model="minilm-l6", labels=["a", "b"], artifact="e" * 64,
    )  # fmt: skip
    with pytest.raises(NotFound):
        model_get_visible(tenant=TenantFactory(), model_id=model.pk, livemode=True)
    model.deleted_at = timezone.now() - timedelta(seconds=1)
    model.save(update_fields=["deleted_at"])
    with pytest.raises(NotFound):
        model_get_visible(tenant=tenant, model_id=model.pk, livemode=True)
    # A base model is everyone's, whatever id path it takes.
    assert model_get_visible(tenant=tenant, model_id="minilm-l6", livemode=True).tenant_id is None


def test_the_ledger_insert_stores_rows_as_the_orm_does_and_skips_stored_ones(tenant):
    from decimal import Decimal

    from core.rows import insert_new
    from metering.models import UsageRecord
    from metering.partitions import skip_stored
    from metering.services import LedgerRow

    occurred = timezone.now() - timedelta(hours=3)

    def row(n: int) -> LedgerRow:
        return LedgerRow(
            event_id=f"req_rows{n}", kind="inference", tenant_id=tenant.pk, api_key_id="key_r",
            livemode=n % 2 == 0, model="minilm-l6", compute_ms=2.25 * n, worker="w",
            cost_micros=Decimal("12.3456") * n, pool="cpu", occurred_at=occurred,
            inputs=n, tokens=10 * n, cached=n % 2, recorded_at=timezone.now(),
        )  # fmt: skip

    with skip_stored():  # as the usage consumer inserts (PostgreSQL's ledger trigger)
        assert insert_new(UsageRecord, [row(1), row(2)], unique="event_id") == {
            "req_rows1",
            "req_rows2",
        }
        # A redelivery beside a new row: only the new one goes in, and nothing is changed.
        assert insert_new(UsageRecord, [row(2), row(3)], unique="event_id") == {"req_rows3"}
    stored = {r.event_id: r for r in UsageRecord.objects.for_tenant(tenant)}
    assert sorted(stored) == ["req_rows1", "req_rows2", "req_rows3"]
    for n in (1, 2, 3):
        expected, found = row(n), stored[f"req_rows{n}"]
        for name in ("kind", "tenant_id", "api_key_id", "livemode", "model", "compute_ms",
                     "worker", "cost_micros", "pool", "occurred_at", "inputs", "tokens",
                     "cached"):  # fmt: skip
            assert getattr(found, name) == getattr(expected, name), name
    assert insert_new(UsageRecord, [], unique="event_id") == set()


def test_ids_that_name_no_base_model_are_remembered_only_up_to_a_bound(tenant):
    """Made-up model ids are endless: each was remembered, and the process grew by each."""
    from inference import selectors

    selectors._base_models.clear()
    for n in range(selectors.BASE_MODEL_CACHE_MAX + 500):
        with pytest.raises(NotFound):
            model_get_visible(tenant=tenant, model_id=f"made-up-{n}", livemode=True)
    assert len(selectors._base_models) == selectors.BASE_MODEL_CACHE_MAX
    # A real base model is still read, and remembered.
    assert model_get_visible(tenant=tenant, model_id="minilm-l6", livemode=True).id == "minilm-l6"
    assert selectors._base_models["minilm-l6"][1] is not None
