"""A fine-tuned model's int8 variant in the model registry: listed and linked both ways,
deleted with its model (and alone, leaving the model), a result-cache version of its own,
and not counted against the plan's fine-tuned models."""

from __future__ import annotations

import pytest

from inference.cache import cache_version
from inference.models import AIModel
from workers.contract import result_cache_keys

pytestmark = pytest.mark.django_db

PARENT = "ft:minilm-l6:tickets:ab12cd34"
VARIANT = "ft:minilm-l6-int8:tickets:ab12cd34"


@pytest.fixture
def pair(tenant):
    parent = AIModel.objects.create(
        id=PARENT,
        tenant=tenant,
        kind="fine_tuned",
        base_model="minilm-l6",
        labels=["a", "b"],
        metrics={"accuracy": 0.95, "int8_accuracy": 0.945, "int8_accuracy_delta": -0.5},
        artifact="f" * 64,
    )
    variant = AIModel.objects.create(
        id=VARIANT,
        tenant=tenant,
        kind="fine_tuned",
        base_model="minilm-l6-int8",
        labels=["a", "b"],
        metrics={"accuracy": 0.945},
        artifact="f" * 64,
        parent=parent,
        accuracy_delta=-0.5,
    )
    return parent, variant


def test_the_variant_and_its_model_name_each_other(api, pair):
    listed = {m["id"]: m for m in api.get("/v1/models").json()["data"]}
    for body in (listed, {m: api.get(f"/v1/models/{m}").json() for m in (PARENT, VARIANT)}):
        parent, variant = body[PARENT], body[VARIANT]
        assert parent["int8_variant"] == VARIANT and parent["parent_model"] is None
        assert parent["accuracy_delta"] is None and parent["base_model"] == "minilm-l6"
        assert variant["parent_model"] == PARENT and variant["int8_variant"] is None
        assert variant["accuracy_delta"] == -0.5 and variant["base_model"] == "minilm-l6-int8"
        assert variant["type"] == "fine_tuned" and variant["labels"] == ["a", "b"]
    base = api.get("/v1/models/minilm-l6").json()
    assert (base["int8_variant"], base["parent_model"], base["accuracy_delta"]) == (None,) * 3


def test_deleting_the_model_deletes_its_variant(api, pair):
    deleted = api.delete(f"/v1/models/{PARENT}")
    assert deleted.status_code == 200 and deleted.json()["id"] == PARENT
    for model_id in (PARENT, VARIANT):
        assert api.get(f"/v1/models/{model_id}").status_code == 404
        refused = api.post("/v1/classify", {"model": model_id, "inputs": ["x"]}, format="json")
        assert refused.status_code == 404
    ids = [m["id"] for m in api.get("/v1/models").json()["data"]]
    assert PARENT not in ids and VARIANT not in ids


def test_a_delete_that_another_beat_to_it_is_a_404(api, tenant, pair, monkeypatch):
    """Two deletes at once: one 200, one 404, as one after the other (both read the model
    before either wrote, and both answered 200)."""
    from django.utils import timezone

    from inference import services

    read = services.model_get_visible

    def read_then_another_deletes(**kwargs):
        model = read(**kwargs)
        AIModel.objects.for_tenant(tenant).filter(pk=PARENT).update(deleted_at=timezone.now())
        return model

    monkeypatch.setattr(services, "model_get_visible", read_then_another_deletes)
    late = api.delete(f"/v1/models/{PARENT}")
    assert late.status_code == 404 and late.json()["error"]["code"] == "model_not_found"


def test_deleting_the_variant_leaves_its_model(api, pair):
    assert api.delete(f"/v1/models/{VARIANT}").status_code == 200
    assert api.get(f"/v1/models/{VARIANT}").status_code == 404
    parent = api.get(f"/v1/models/{PARENT}").json()
    assert parent["int8_variant"] is None
    listed = {m["id"]: m for m in api.get("/v1/models").json()["data"]}
    assert VARIANT not in listed and listed[PARENT]["int8_variant"] is None
    assert api.delete(f"/v1/models/{VARIANT}").status_code == 404  # gone is gone


def test_the_variant_answers_from_a_result_cache_of_its_own(pair):
    parent, variant = pair
    assert cache_version(parent, "t1", True) and cache_version(variant, "t1", True)
    assert cache_version(parent, "t1", True) != cache_version(variant, "t1", True)
    keys = {
        result_cache_keys(cache_version(m, "t1", True) or "", None, None, ["hi"])[0] for m in pair
    }
    assert len(keys) == 2


def test_a_variant_is_not_another_model_for_the_plans_limit(tenant, pair):
    from finetuning.services import _check_plan
    from tests.factories import make_key, subscribe

    subscribe(tenant, "pro")  # 10 fine-tuned models
    for n in range(8):
        AIModel.objects.create(
            id=f"ft:minilm-l6:m:{n}", tenant=tenant, kind="fine_tuned", base_model="minilm-l6"
        )
    make_key(tenant, ["training"])
    from apikeys.models import ApiKey

    key = ApiKey.objects.for_tenant(tenant).get()
    _check_plan(tenant=tenant, api_key=key)  # 9 models and a variant: a 10th is allowed


def test_a_deleted_models_file_leaves_the_store_once_no_model_serves_it(
    api, tenant, pair, django_capture_on_commit_callbacks
):
    """A deleted model's weights stayed on disk for good."""
    import os
    import time

    from core.artifacts import artifact_store
    from inference.services import model_files_sweep

    store = artifact_store()
    digest = store.put(b"model weights of " + tenant.pk.encode())
    AIModel.objects.for_tenant(tenant).update(artifact=digest)
    # Another tenant's model made the very same file (content-addressed: one blob).
    from tests.factories import TenantFactory

    theirs = AIModel.objects.create(
        id="ft:minilm-l6:same:zz99", tenant=TenantFactory(), kind="fine_tuned",
        base_model="minilm-l6", labels=["a", "b"], artifact=digest,
    )  # fmt: skip
    then = time.time() - 3600
    os.utime(store._blob(digest), (then, then))

    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(f"/v1/models/{VARIANT}").status_code == 200
    assert store.exists(digest)  # the model still serves it
    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(f"/v1/models/{PARENT}").status_code == 200
    assert store.exists(digest)  # so does the other tenant's
    theirs.deleted_at = theirs.created_at
    theirs.save(update_fields=["deleted_at"])
    store.put(b"model weights of " + tenant.pk.encode())  # stored again moments ago
    assert model_files_sweep() == 0 and store.exists(digest)
    os.utime(store._blob(digest), (then, then))
    assert model_files_sweep() == 1 and not store.exists(digest)
    assert not AIModel.objects.unscoped().filter(files_released_at__isnull=True,
                                                 deleted_at__isnull=False).exists()  # fmt: skip


def test_a_deleted_models_file_stays_while_a_retrain_on_its_data_is_unfinished(
    api, tenant, pair, django_capture_on_commit_callbacks
):
    """The same data, method and seed make the same file: a retrain's success, applied past
    the grace period (its events consumer behind), registered a model on a file the sweep
    had removed."""
    import os
    import time

    from core.artifacts import artifact_store
    from datasets.models import Dataset
    from finetuning.models import FineTuneJob
    from inference.services import model_files_sweep

    store = artifact_store()
    digest = store.put(b"weights both runs make " + tenant.pk.encode())
    AIModel.objects.for_tenant(tenant).update(artifact=digest)
    data = Dataset.objects.create(tenant=tenant, bytes=1, status="valid", raw_file="c" * 64)
    made = {"tenant": tenant, "base_model": "minilm-l6", "method": "head",
            "training_dataset": data, "training_file": "c" * 64}  # fmt: skip
    FineTuneJob.objects.create(**made, status="succeeded", fine_tuned_model=PARENT)
    retrain = FineTuneJob.objects.create(**made, status="running")
    then = time.time() - 3600
    os.utime(store._blob(digest), (then, then))

    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(f"/v1/models/{PARENT}").status_code == 200
    assert store.exists(digest) and model_files_sweep() == 0
    retrain.status = "succeeded"
    retrain.save(update_fields=["status"])
    assert model_files_sweep() == 2 and not store.exists(digest)  # the model and its variant


def test_a_model_whose_file_has_gone_cannot_be_brought_back_in_the_admin(admin_client, pair):
    from django.contrib.admin.utils import quote
    from django.utils import timezone

    parent, _ = pair
    now = timezone.now()
    AIModel.objects.unscoped().filter(pk=PARENT).update(deleted_at=now, files_released_at=now)
    page = f"/admin/inference/aimodel/{quote(PARENT)}/change/"
    form = admin_client.get(page)
    assert form.status_code == 200
    assert 'name="deleted_at' not in form.content.decode()  # shown, not editable
    admin_client.post(page, {"tenant": parent.tenant_id, "kind": "fine_tuned",
                             "base_model": "minilm-l6", "status": "ready", "labels": '["a","b"]',
                             "metrics": "{}", "artifact": parent.artifact,
                             "livemode": "on", "deleted_at_0": "", "deleted_at_1": ""})  # fmt: skip
    assert AIModel.objects.unscoped().get(pk=PARENT).deleted_at is not None
