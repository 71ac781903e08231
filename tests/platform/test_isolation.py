"""Tenant B's key against every tenant-owned route, with tenant A's ids: always a 404
(never a 403 that would confirm the id exists), and A's objects are untouched."""

from __future__ import annotations

import re

import pytest

from apikeys.models import ApiKey
from config.urls import v1
from datasets.models import Dataset
from finetuning.models import FineTuneJob
from inference.models import AIModel
from tests.factories import TenantFactory, bearer, make_key

pytestmark = pytest.mark.django_db


def test_tenant_b_cannot_see_or_touch_tenant_a(tenant):
    a_secret = make_key(tenant, ["admin"])
    a_key = ApiKey.objects.for_tenant(tenant).get()
    a_model = AIModel.objects.create(
        id="ft:minilm-l6:support:abc123",
        tenant=tenant,
        kind="fine_tuned",
        base_model="minilm-l6",
        labels=["x", "y"],
    )
    a_variant = AIModel.objects.create(
        id="ft:minilm-l6-int8:support:abc123",
        tenant=tenant,
        kind="fine_tuned",
        base_model="minilm-l6-int8",
        labels=["x", "y"],
        parent=a_model,
        accuracy_delta=-0.5,
    )
    a_dataset = Dataset.objects.create(
        tenant=tenant, bytes=1, status="valid", raw_file="0" * 64, content_file="0" * 64
    )
    a_job = FineTuneJob.objects.create(
        tenant=tenant,
        api_key_id=a_key.pk,
        base_model="minilm-l6",
        method="head",
        training_dataset=a_dataset,
        training_file="0" * 64,
        status="queued",
    )
    b = bearer(make_key(TenantFactory(), ["admin"]))
    ids = {
        "key_id": a_key.pk,
        "model_id": a_model.pk,
        "dataset_id": a_dataset.pk,
        "job_id": a_job.pk,
    }

    # Every route with an id in its path, every method it serves; models twice: a fine-tuned
    # model and its int8 variant.
    checked = set()
    for model_id in (a_model.pk, a_variant.pk):
        ids["model_id"] = model_id
        for pattern in v1:
            route = str(pattern.pattern)
            params = re.findall(r"<str:(\w+)>", route)
            if not params:
                continue
            path = "/" + re.sub(r"<str:(\w+)>", lambda m: ids[m.group(1)], route)
            view = pattern.callback.view_class
            for method in ("get", "post", "delete"):
                if hasattr(view, method):
                    response = getattr(b, method)(path, {}, format="json")
                    assert response.status_code == 404, (method, path, response.json())
                    assert response.json()["error"]["type"] == "not_found"
                    checked.add((method, path))
    assert len(checked) >= 7

    listed = [m["id"] for m in b.get("/v1/models").json()["data"]]
    for model_id in (a_model.pk, a_variant.pk):
        response = b.post("/v1/classify", {"model": model_id, "inputs": ["x"]}, format="json")
        assert response.status_code == 404 and response.json()["error"]["param"] == "model"
        assert model_id not in listed
    assert a_key.pk not in [k["id"] for k in b.get("/v1/api-keys").json()["data"]]

    # A's objects survived B's attempts.
    assert bearer(a_secret).get(f"/v1/api-keys/{a_key.pk}").status_code == 200
    for model_id in (a_model.pk, a_variant.pk):
        assert bearer(a_secret).get(f"/v1/models/{model_id}").status_code == 200
    assert bearer(a_secret).get(f"/v1/models/{a_model.pk}").json()["int8_variant"] == (a_variant.pk)


def test_models_lists_base_models_and_own_fine_tunes(tenant, api):
    AIModel.objects.create(
        id="ft:minilm-l6:mine:1", tenant=tenant, kind="fine_tuned", base_model="minilm-l6"
    )
    ids = [m["id"] for m in api.get("/v1/models").json()["data"]]
    assert "minilm-l6" in ids and "ft:minilm-l6:mine:1" in ids
    base = api.get("/v1/models/minilm-l6").json()
    assert base["type"] == "base" and base["owned_by"] == "system"
    refused = api.delete("/v1/models/minilm-l6")
    assert refused.status_code == 403
    deleted = api.delete("/v1/models/ft:minilm-l6:mine:1")
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert api.get("/v1/models/ft:minilm-l6:mine:1").status_code == 404
