"""/v1/fine-tunes without a worker: creation and its checks, every bad input a 4xx in the
contract's shape, cancel, events, isolation. (Jobs running for real: tests/e2e.)"""

from __future__ import annotations

import pytest
from django.contrib.admin.utils import quote

from finetuning.models import FineTuneJob
from inference.models import AIModel
from tests.factories import TenantFactory, subscribe
from tests.finetuning.conftest import read_rows

pytestmark = pytest.mark.django_db


def create(client, **body):
    return client.post("/v1/fine-tunes", body, format="json")


def create_at_once(secret: str, dataset_id: str, count: int = 4) -> list:
    """``count`` creates of a job on ``dataset_id`` sent at once, each on its own connection."""
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection
    from rest_framework.test import APIClient

    def create_one(_):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        try:
            return create(client, base_model="minilm-l6", training_dataset=dataset_id)
        finally:
            connection.close()

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(create_one, range(count)))


def assert_error(response, status, code, param=None):
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["type"] and error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error


def test_create_a_job(api, tenant, make_dataset):
    dataset = make_dataset(tenant)
    response = create(
        api,
        base_model="minilm-l6",
        training_dataset=dataset.id,
        suffix="support-v1",
        hyperparameters={"epochs": 3},
    )
    assert response.status_code == 201, response.content
    job = response.json()
    assert job["id"].startswith("ftjob_") and job["object"] == "fine_tune"
    assert job["status"] == "queued" and job["method"] == "head"
    assert job["hyperparameters"] == {"epochs": 3, "learning_rate": 0.01, "batch_size": 32}
    assert job["fine_tuned_model"] is None and job["trained_tokens"] is None
    assert job["validation_dataset"] is None and job["error"] is None
    assert api.get(f"/v1/fine-tunes/{job['id']}").json() == job
    # A job's null suffix sent back (its fields copied into a new request) is no suffix.
    again = create(api, base_model="minilm-l6", training_dataset=dataset.id, suffix=None)
    assert again.status_code == 201 and again.json()["suffix"] is None, again.content
    assert [j["id"] for j in api.get("/v1/fine-tunes").json()["data"]][-1] == job["id"]
    events = api.get(f"/v1/fine-tunes/{job['id']}/events").json()["data"]
    assert [e["message"].split(";")[0] for e in events][-1] == "Fine-tuning job created"
    assert all(set(e) >= {"id", "created_at", "level", "message", "data"} for e in events)


def test_lora_defaults(api, tenant, make_dataset):
    job = create(
        api, base_model="minilm-l6", training_dataset=make_dataset(tenant).id, method="lora"
    ).json()
    assert job["hyperparameters"]["lora_rank"] == 8
    assert job["hyperparameters"]["target_modules"] == ["query", "value"]


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({}, 400, "missing_parameter", "base_model"),
        ({"base_model": "nope"}, 404, "model_not_found", "base_model"),
        ({"training_dataset": "ds_missing"}, 404, "dataset_not_found", "training_dataset"),
        ({"validation_dataset": "ds_missing"}, 404, "dataset_not_found", "validation_dataset"),
        ({"method": "full"}, 400, "invalid_choice", "method"),
        ({"hyperparameters": {"epochs": 0}}, 400, "min_value", "hyperparameters.epochs"),
        ({"hyperparameters": {"epochs": "5"}}, 400, "invalid_parameter", "hyperparameters.epochs"),
        ({"hyperparameters": {"epochs": 1000}}, 400, "max_value", "hyperparameters.epochs"),
        ({"hyperparameters": {"learning_rate": 0}}, 400, "min_value", None),
        ({"hyperparameters": {"batch_size": True}}, 400, "invalid_parameter", None),
        ({"hyperparameters": {"warmup": 3}}, 400, "unknown_parameter", "hyperparameters.warmup"),
        ({"hyperparameters": {"lora_rank": 4}}, 400, "invalid_parameter", None),
        ({"hyperparameters": [1]}, 400, "invalid_parameter", "hyperparameters"),
        ({"method": "lora", "hyperparameters": {"lora_rank": 0}}, 400, "min_value", None),
        ({"method": "lora", "hyperparameters": {"lora_dropout": 1}}, 400, "max_value", None),
        # A step of 256 rows would not fit a training worker (~57 MB a row); a head's may.
        (
            {"method": "lora", "hyperparameters": {"batch_size": 33}},
            400,
            "invalid_parameter",
            "hyperparameters.batch_size",
        ),
        (
            {"method": "lora", "hyperparameters": {"target_modules": ["mlp"]}},
            400,
            "invalid_parameter",
            "hyperparameters.target_modules",
        ),
        ({"method": "lora", "hyperparameters": {"target_modules": []}}, 400, "min_length", None),
        (
            {"method": "lora", "hyperparameters": {"target_modules": ["query", "query"]}},
            400,
            "invalid_parameter",
            "hyperparameters.target_modules",
        ),
        ({"suffix": "has space"}, 400, "invalid_parameter", "suffix"),
        ({"suffix": "ends-in-a-newline\n"}, 400, "invalid_parameter", "suffix"),
        ({"suffix": "-"}, 400, "invalid_parameter", "suffix"),  # ft:minilm-l6:-:<id>
        ({"suffix": "__"}, 400, "invalid_parameter", "suffix"),
        ({"suffix": "x" * 41}, 400, "max_length", "suffix"),
        ({"seed": -1}, 400, "min_value", "seed"),
        ({"colour": "red"}, 400, "unknown_parameter", "colour"),
    ],
)
def test_bad_input_is_a_clear_4xx(api, tenant, make_dataset, body, status, code, param):
    defaults = {"base_model": "minilm-l6", "training_dataset": make_dataset(tenant).id}
    if body == {}:
        defaults = {}
    response = create(api, **{**defaults, **body})
    assert_error(response, status, code, param)
    assert not FineTuneJob.objects.for_tenant(tenant).exists()


def test_invalid_dataset_and_label_mismatch(api, tenant, make_dataset):
    bad = make_dataset(tenant, data=b"not json\n")
    refused = create(api, base_model="minilm-l6", training_dataset=bad.id)
    assert_error(refused, 400, "dataset_invalid", "training_dataset")
    assert "(1 problem);" in refused.json()["error"]["message"]
    rows = read_rows("support_tickets.jsonl")
    training = make_dataset(tenant, [r for r in rows if r["label"] != "delivery"][:60])
    validation = make_dataset(tenant, rows[200:260])
    assert_error(
        create(
            api,
            base_model="minilm-l6",
            training_dataset=training.id,
            validation_dataset=validation.id,
        ),
        400,
        "validation_labels_mismatch",
        "validation_dataset",
    )


def test_a_label_spelled_with_other_code_points_is_named_escaped(api, tenant, make_dataset):
    """ "café" composed in one file and decomposed in the other printed alike: the refusal
    named a label the reader saw in both files."""
    rows = [{"text": f"text {i}", "label": ("caf\u00e9", "tea")[i % 2]} for i in range(40)]
    training = make_dataset(tenant, rows)
    validation = make_dataset(
        tenant, [{**r, "label": r["label"].replace("\u00e9", "e\u0301")} for r in rows]
    )
    refused = create(
        api, base_model="minilm-l6", training_dataset=training.id, validation_dataset=validation.id
    )
    assert_error(refused, 400, "validation_labels_mismatch", "validation_dataset")
    message = refused.json()["error"]["message"]
    assert "'cafe\\u0301' looks like the training dataset's 'caf\\xe9'" in message, message


def test_a_fine_tuned_model_cannot_be_the_base(api, tenant, make_dataset):
    AIModel.objects.create(
        id="ft:minilm-l6:x:1", tenant=tenant, kind="fine_tuned", base_model="minilm-l6"
    )
    response = create(api, base_model="ft:minilm-l6:x:1", training_dataset=make_dataset(tenant).id)
    assert_error(response, 400, "invalid_base_model", "base_model")


def test_both_methods_train_on_the_int8_base(api, tenant, make_dataset):
    dataset = make_dataset(tenant).id
    for method in ("head", "lora"):
        job = create(api, base_model="minilm-l6-int8", training_dataset=dataset, method=method)
        assert job.status_code == 201, job.content
        assert job.json()["fine_tuned_model"] is None and job.json()["method"] == method


def test_cancel(api, tenant, make_dataset):
    job = create(api, base_model="minilm-l6", training_dataset=make_dataset(tenant).id).json()
    # It takes no parameters: one sent is refused by name, and the job is left as it was.
    refused = api.post(f"/v1/fine-tunes/{job['id']}/cancel", {"reason": "x"}, format="json")
    assert_error(refused, 400, "unknown_parameter", "reason")
    assert api.get(f"/v1/fine-tunes/{job['id']}").json()["status"] == "queued"
    assert api.post(f"/v1/fine-tunes/{job['id']}/cancel", {}, format="json").status_code == 200
    job = create(api, base_model="minilm-l6", training_dataset=make_dataset(tenant).id).json()
    cancelled = api.post(f"/v1/fine-tunes/{job['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    assert_error(api.post(f"/v1/fine-tunes/{job['id']}/cancel"), 409, "job_not_cancellable")


def test_scope_and_isolation(tenant, other_tenant, client_for, make_dataset):
    mine = client_for(tenant, ["training"])
    job = create(mine, base_model="minilm-l6", training_dataset=make_dataset(tenant).id).json()
    assert_error(client_for(tenant, ["inference"]).get("/v1/fine-tunes"), 403, "insufficient_scope")
    other = client_for(other_tenant, ["admin"])
    for method, path in [
        ("get", f"/v1/fine-tunes/{job['id']}"),
        ("get", f"/v1/fine-tunes/{job['id']}/events"),
        ("post", f"/v1/fine-tunes/{job['id']}/cancel"),
    ]:
        assert_error(getattr(other, method)(path), 404, "job_not_found", param="id")
    assert other.get("/v1/fine-tunes").json()["data"] == []
    # Another tenant's dataset cannot be trained on either.
    response = create(other, base_model="minilm-l6", training_dataset=job["training_dataset"])
    assert_error(response, 404, "dataset_not_found", "training_dataset")
    assert mine.get(f"/v1/fine-tunes/{job['id']}").json()["status"] == "queued"


def test_a_job_is_not_created_while_the_training_queue_is_unreachable(
    api, tenant, make_dataset, monkeypatch
):
    """It was a 201 `queued`, failed a moment later with `queue_unavailable`."""
    import redis

    down = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    monkeypatch.setattr("finetuning.dispatch._redis", lambda: down)
    dataset = make_dataset(tenant)
    refused = create(api, base_model="minilm-l6", training_dataset=dataset.id)
    assert refused.status_code == 503, refused.content
    assert refused.json()["error"]["code"] == "broker_unavailable"
    assert "nothing was created" in refused.json()["error"]["message"]
    assert not FineTuneJob.objects.for_tenant(tenant).exists()


def test_idempotent_create_makes_one_job(api, tenant, make_dataset):
    body = {"base_model": "minilm-l6", "training_dataset": make_dataset(tenant).id}
    first = api.post("/v1/fine-tunes", body, format="json", HTTP_IDEMPOTENCY_KEY="ft-1")
    again = api.post("/v1/fine-tunes", body, format="json", HTTP_IDEMPOTENCY_KEY="ft-1")
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert FineTuneJob.objects.for_tenant(tenant).count() == 1
    other = api.post(
        "/v1/fine-tunes", {**body, "suffix": "x"}, format="json", HTTP_IDEMPOTENCY_KEY="ft-1"
    )
    assert other.status_code == 409


def test_the_plan_limits_fine_tuned_models(api, tenant, other_tenant, client_for, make_dataset):
    dataset = make_dataset(tenant)
    for n in range(9):
        AIModel.objects.create(
            id=f"ft:minilm-l6:m:{n}", tenant=tenant, kind="fine_tuned", base_model="minilm-l6"
        )
    body = {"base_model": "minilm-l6", "training_dataset": dataset.id}
    assert create(api, **body).status_code == 201  # the 10th: a job in progress counts
    refused = create(api, **body)
    assert_error(refused, 402, "fine_tuned_model_limit")
    assert refused.json()["error"]["type"] == "payment_required"
    assert api.delete("/v1/models/ft:minilm-l6:m:0").status_code == 200
    assert create(api, **body).status_code == 201
    # Each mode counts its own (a live key can neither see nor delete test-mode models).
    test_mode = client_for(tenant, ["training"], mode="test")
    assert create(test_mode, **body).status_code == 201
    assert_error(create(api, **body), 402, "fine_tuned_model_limit")

    # The free plan (no subscription) does not include fine-tuning: that is what it says.
    free = client_for(other_tenant, ["training"])
    refused = create(free, base_model="minilm-l6", training_dataset=make_dataset(other_tenant).id)
    assert_error(refused, 402, "fine_tuning_not_in_plan")
    assert "Free plan does not include fine-tuning" in refused.json()["error"]["message"]
    assert not FineTuneJob.objects.for_tenant(other_tenant).exists()


def test_an_unpaid_subscription_stops_live_jobs_only(tenant, client_for, make_dataset):
    """Test mode is never billed: a bill unpaid beyond the grace period stops live jobs
    (402), not a test key's."""
    from datetime import UTC, datetime, timedelta

    from billing.models import Subscription
    from tenants.selectors import tenant_context_forget

    Subscription.objects.for_tenant(tenant).update(
        status="past_due", past_due_since=datetime.now(UTC) - timedelta(days=30)
    )
    tenant_context_forget(tenant_id=tenant.pk)
    body = {"base_model": "minilm-l6", "training_dataset": make_dataset(tenant).id}
    assert_error(create(client_for(tenant, ["training"]), **body), 402, "subscription_unpaid")
    # Whatever the body, as a classification's: no fix to it would let the job run.
    for bad in ({**body, "training_dataset": "ds_nope"}, {**body, "method": "bogus"}, {}):
        assert_error(create(client_for(tenant, ["training"]), **bad), 402, "subscription_unpaid")
    assert create(client_for(tenant, ["training"], mode="test"), **body).status_code == 201


def _plan(slug, **features):
    from plans.models import Plan

    return Plan.objects.create(id=f"{slug}@1", slug=slug, name=slug.title(), **features)


def test_the_plans_features_are_enforced(client_for, make_dataset):
    """What GET /v1/plans publishes is what a plan gets: no fine-tuning, no job, however many
    models it would allow; no LoRA, no lora job (a head job is fine)."""
    no_tuning = TenantFactory()
    subscribe(no_tuning, _plan("models-only", fine_tuning=False, max_fine_tuned_models=5).slug)
    api = client_for(no_tuning, ["training"])
    dataset = make_dataset(no_tuning).id
    for method in ("head", "lora"):
        refused = create(api, base_model="minilm-l6", training_dataset=dataset, method=method)
        assert_error(refused, 402, "fine_tuning_not_in_plan")
        assert refused.json()["error"]["type"] == "payment_required"

    head_only = TenantFactory()
    subscribe(head_only, _plan("head-only", fine_tuning=True, max_fine_tuned_models=3).slug)
    api = client_for(head_only, ["training"])
    dataset = make_dataset(head_only).id
    refused = create(api, base_model="minilm-l6", training_dataset=dataset, method="lora")
    assert_error(refused, 402, "lora_not_in_plan", "method")
    assert "does not include LoRA" in refused.json()["error"]["message"]
    assert not FineTuneJob.objects.for_tenant(head_only).exists()
    assert create(api, base_model="minilm-l6", training_dataset=dataset).status_code == 201
    # A request that is invalid anyway is a 400, not a 402: only a valid job is refused.
    assert_error(create(api, base_model="minilm-l6", method="lora"), 400, "missing_parameter")


def test_operators_pages_for_jobs_events_and_models_render(api, tenant, make_dataset, admin_client):
    """Their change pages used to be a 500: a choice list of another tenant-scoped model."""
    from finetuning.models import FineTuneEvent

    job = create(api, base_model="minilm-l6", training_dataset=make_dataset(tenant).id).json()
    event = FineTuneEvent.objects.unscoped().filter(job_id=job["id"]).first()
    pages = [
        f"/admin/finetuning/finetunejob/{quote(job['id'])}/change/",
        "/admin/inference/aimodel/minilm-l6-int8/change/",
        "/admin/finetuning/finetunejob/",
        "/admin/finetuning/finetuneevent/",
    ]
    if event is not None:
        pages.append(f"/admin/finetuning/finetuneevent/{quote(event.pk)}/change/")
    for page in pages:
        assert admin_client.get(page).status_code == 200, page


def test_validation_that_cannot_mean_much_is_said_in_the_jobs_events(api, tenant, make_dataset):
    from tests.finetuning.conftest import read_rows

    rows = read_rows("support_tickets.jsonl")[:60]
    training = make_dataset(tenant, rows)
    labels = sorted({row["label"] for row in rows})
    partial = make_dataset(tenant, [row for row in rows if row["label"] != labels[0]])

    def warnings(job):
        events = api.get(f"/v1/fine-tunes/{job['id']}/events").json()["data"]
        return [e["message"] for e in events if e["level"] == "warning"]

    same = create(api, base_model="minilm-l6", training_dataset=training.id,
                  validation_dataset=training.id).json()  # fmt: skip
    assert any("same file as the training dataset" in w for w in warnings(same))
    misses = create(api, base_model="minilm-l6", training_dataset=training.id,
                    validation_dataset=partial.id).json()  # fmt: skip
    assert any(f"no examples of {labels[0]!r}" in w for w in warnings(misses))
    fine = create(api, base_model="minilm-l6", training_dataset=training.id).json()
    assert warnings(fine) == []


def test_test_mode_jobs_and_their_models_stay_in_test_mode(tenant, client_for, make_dataset):
    """A job made with an sk_test_ key is not billed, so neither it nor the model it makes
    is seen or served in live mode (and the other way round), as Stripe keeps modes apart."""
    from finetuning.registration import fine_tuned_model_register

    live, test = client_for(tenant, ["admin"]), client_for(tenant, ["admin"], mode="test")
    dataset = make_dataset(tenant).id
    test_job = create(test, base_model="minilm-l6", training_dataset=dataset).json()
    live_job = create(live, base_model="minilm-l6", training_dataset=dataset).json()
    assert [j["id"] for j in test.get("/v1/fine-tunes").json()["data"]] == [test_job["id"]]
    assert [j["id"] for j in live.get("/v1/fine-tunes").json()["data"]] == [live_job["id"]]
    for method, path in [
        ("get", f"/v1/fine-tunes/{test_job['id']}"),
        ("get", f"/v1/fine-tunes/{test_job['id']}/events"),
        ("post", f"/v1/fine-tunes/{test_job['id']}/cancel"),
    ]:
        assert_error(getattr(live, method)(path), 404, "job_not_found", param="id")
    assert_error(test.get(f"/v1/fine-tunes/{live_job['id']}"), 404, "job_not_found", "id")

    job = FineTuneJob.objects.for_tenant(tenant).get(pk=test_job["id"])
    model = fine_tuned_model_register(job, {"labels": ["a", "b"], "artifact": "d" * 64})
    assert model.livemode is False
    assert model.id in [m["id"] for m in test.get("/v1/models").json()["data"]]
    assert test.get(f"/v1/models/{model.id}").status_code == 200
    assert model.id not in [m["id"] for m in live.get("/v1/models").json()["data"]]
    assert_error(live.get(f"/v1/models/{model.id}"), 404, "model_not_found", "id")
    assert_error(live.delete(f"/v1/models/{model.id}"), 404, "model_not_found", "id")
    classify = live.post("/v1/classify", {"model": model.id, "inputs": ["hello"]}, format="json")
    assert_error(classify, 404, "model_not_found", "model")
    # Nor can a live job's model be reached from test mode.
    live_model = fine_tuned_model_register(
        FineTuneJob.objects.for_tenant(tenant).get(pk=live_job["id"]),
        {"labels": ["a", "b"], "artifact": "e" * 64},
    )
    assert live_model.livemode is True
    assert_error(test.get(f"/v1/models/{live_model.id}"), 404, "model_not_found", "id")
    assert test.delete(f"/v1/models/{model.id}").status_code == 200
