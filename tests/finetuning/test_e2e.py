"""Fine-tuning end to end: real HTTP to a live API, a real training worker process (solo
pool, as deployed) and inference worker, the real job-events and usage consumers.

Upload good and bad files, train a head and a LoRA model and classify with them and with
their int8 variants (offered, billed at the int8 tier, deleted with their model; or not
offered past the threshold), cancel a queued, a waiting (never sent) and a running job,
cancel a job whose worker finished before its success was applied (not billed), kill -9 the
training worker mid-job, and check that another tenant sees none of it."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
import redis
from django.utils import timezone

from billing.rating import billable_usage
from finetuning.consumer import JobEventConsumer, events_queue
from finetuning.models import FineTuneEvent, FineTuneJob
from inference.models import AIModel
from metering.consumer import UsageConsumer
from metering.models import UsageRecord
from plans.models import Plan
from tests.factories import TenantFactory, make_key, subscribe
from tests.finetuning.conftest import read_rows, rows_file

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

LEASE_S = 5.0  # heartbeats every 0.3 s (tests/conftest.py): margin for a busy CI machine
TERMINAL = {"succeeded", "failed", "cancelled"}
TICKETS = read_rows("support_tickets.jsonl")
INPUTS = [
    "I was charged twice for my subscription, please refund one payment",
    "The app crashes with an error every time I open the settings page",
    "My parcel never arrived and the tracking number does not work",
    "I can't log in, the password reset link has expired",
]


@pytest.fixture(autouse=True)
def empty_queues() -> None:
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    client.delete("training", events_queue.name, "usage")


@pytest.fixture
def http(live_server: Any, inference_worker: str, training_worker: Any) -> Callable[..., Any]:
    def client(secret: str) -> httpx.Client:
        return httpx.Client(
            base_url=live_server.url, headers={"Authorization": f"Bearer {secret}"}, timeout=60
        )

    return client


@pytest.fixture
def tenant_secret(transactional_db: Any) -> str:
    tenant = TenantFactory()
    subscribe(tenant, "pro")
    return make_key(tenant, ["admin"])


def upload(client: httpx.Client, rows: list[dict[str, str]] | bytes, name="train.jsonl") -> Any:
    data = rows if isinstance(rows, bytes) else rows_file(rows)
    response = client.post("/v1/datasets", files={"file": (name, data)})
    assert response.status_code == 201, response.text
    return response.json()


def start(client: httpx.Client, dataset: str, **body: Any) -> Any:
    response = client.post(
        "/v1/fine-tunes", json={"base_model": "minilm-l6", "training_dataset": dataset, **body}
    )
    assert response.status_code == 201, response.text
    return response.json()


def wait(job_id: str, until: Callable[[FineTuneJob], bool], timeout: float = 90) -> FineTuneJob:
    """Run the real job-events consumer (with a short lease) until ``until(job)``."""
    deadline = time.monotonic() + timeout
    consumer = JobEventConsumer(sweep_interval_s=0.25, heartbeat_timeout_s=LEASE_S)

    def job() -> FineTuneJob:
        return FineTuneJob.objects.unscoped().get(pk=job_id)

    consumer.run(should_stop=lambda: until(job()) or time.monotonic() > deadline)
    found = job()
    if not until(found):
        story = [(e.attempt, e.type, e.message) for e in stored_events(job_id)]
        pytest.fail(f"job {job_id}: {found.status} attempt {found.attempt} {found.error}: {story}")
    return found


def stored_events(job_id: str) -> list[FineTuneEvent]:
    return list(FineTuneEvent.objects.unscoped().filter(job_id=job_id).order_by("created_at"))


def said(job_id: str, text: str) -> bool:
    return any(text in e.message for e in stored_events(job_id))


def events(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    return client.get(f"/v1/fine-tunes/{job_id}/events?limit=100").json()["data"][::-1]


def test_head_job_end_to_end_and_tenant_isolation(http, tenant_secret):
    with http(tenant_secret) as client:
        bad = upload(client, b'{"text": "only one", "label": "x"}\nnot json\n')
        assert bad["status"] == "invalid" and bad["errors"][0] == {
            "line": 2,
            "message": "Line is not valid JSON: Expecting value.",
        }
        refused = client.post(
            "/v1/fine-tunes", json={"base_model": "minilm-l6", "training_dataset": bad["id"]}
        )
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "dataset_invalid"

        dataset = upload(client, TICKETS[:160])
        assert dataset["status"] == "valid" and len(dataset["labels"]) == 4
        job = start(client, dataset["id"], suffix="tickets")
        done = wait(job["id"], lambda j: j.status in TERMINAL)
        body = client.get(f"/v1/fine-tunes/{job['id']}").json()
        assert body["status"] == "succeeded", body
        assert body["fine_tuned_model"].startswith("ft:minilm-l6:tickets:")
        assert body["metrics"]["accuracy"] >= 0.9 and "per_label_f1" in body["metrics"]
        assert body["trained_tokens"] > 0 and body["finished_at"] and done.attempt == 1
        progress = [e for e in events(client, job["id"]) if e["type"] == "progress"]
        assert [e["data"]["epoch"] for e in progress] == list(range(1, 11))
        assert {"loss", "validation_accuracy"} <= set(progress[-1]["data"])

        model = body["fine_tuned_model"]
        answer = client.post("/v1/classify", json={"model": model, "inputs": INPUTS})
        assert answer.status_code == 200, answer.text
        labels = [row["label"] for row in answer.json()["results"]]
        assert labels == ["billing", "technical", "delivery", "account"]
        listed = client.get("/v1/models").json()["data"]
        assert any(m["id"] == model and m["metrics"]["accuracy"] for m in listed)

    # The job's usage reached the ledger once, keyed by the job id, with its success: the
    # worker sent nothing to the usage stream.
    row = UsageRecord.objects.unscoped().get(event_id=job["id"])
    assert row.kind == "fine_tune" and row.tokens == body["trained_tokens"] and row.compute_ms > 0
    assert row.model == body["fine_tuned_model"] and row.cost_micros > 0 and row.pool
    UsageConsumer(flush_interval=0.1).run(until_idle=True)  # the classification's usage
    assert list(UsageRecord.objects.unscoped().filter(kind="fine_tune")) == [row]

    # Another tenant: 404 for the dataset, the job and the model, everywhere.
    with http(make_key(TenantFactory(), ["admin"])) as other:
        for method, path in [
            ("GET", f"/v1/datasets/{dataset['id']}"),
            ("DELETE", f"/v1/datasets/{dataset['id']}"),
            ("GET", f"/v1/fine-tunes/{job['id']}"),
            ("GET", f"/v1/fine-tunes/{job['id']}/events"),
            ("POST", f"/v1/fine-tunes/{job['id']}/cancel"),
            ("GET", f"/v1/models/{model}"),
            ("DELETE", f"/v1/models/{model}"),
        ]:
            assert other.request(method, path).status_code == 404, (method, path)
        stolen = other.post("/v1/classify", json={"model": model, "inputs": ["hi"]})
        assert stolen.status_code == 404
        assert other.get("/v1/fine-tunes").json()["data"] == []
        assert other.get("/v1/datasets").json()["data"] == []


def test_lora_job_end_to_end(http, tenant_secret):
    with http(tenant_secret) as client:
        dataset = upload(client, TICKETS[:80])
        job = start(client, dataset["id"], method="lora", hyperparameters={"epochs": 1})
        wait(job["id"], lambda j: j.status in TERMINAL)
        body = client.get(f"/v1/fine-tunes/{job['id']}").json()
        assert body["status"] == "succeeded", body
        answer = client.post(
            "/v1/classify", json={"model": body["fine_tuned_model"], "inputs": INPUTS[:2]}
        )
        assert answer.status_code == 200, answer.text
        assert [row["label"] for row in answer.json()["results"]] == ["billing", "technical"]
        # Its int8 variant: adapters merged, then quantised, on the inference worker.
        variant = client.get(f"/v1/models/{body['fine_tuned_model']}").json()["int8_variant"]
        assert variant == int8_id(body["fine_tuned_model"]), body["metrics"]
        answer = client.post("/v1/classify", json={"model": variant, "inputs": INPUTS[:2]})
        assert answer.status_code == 200, answer.text
        assert [row["label"] for row in answer.json()["results"]] == ["billing", "technical"]


def test_a_diverging_job_fails_with_what_to_change_unbilled_and_holds_up_no_one(
    http, tenant_secret
):
    """The audit's case: hyperparameters within their ranges that make LoRA's loss NaN. The
    job fails at once with `training_diverged` and no charge; its events carry no NaN (which
    the database refused, and the re-queued event then held up every tenant's jobs), and the
    next job is not held up."""
    hyperparameters = {"epochs": 25, "learning_rate": 1.0, "lora_alpha": 1024.0,
                       "lora_rank": 64, "lora_dropout": 0.0, "batch_size": 1,
                       "target_modules": ["query", "key", "value"]}  # fmt: skip
    with http(tenant_secret) as client:
        dataset = upload(client, TICKETS[:40])
        job = start(client, dataset["id"], method="lora", hyperparameters=hyperparameters)
        wait(job["id"], lambda j: j.status in TERMINAL)
        body = client.get(f"/v1/fine-tunes/{job['id']}").json()
        assert body["status"] == "failed", body
        assert body["error"]["code"] == "training_diverged"
        assert "Lower learning_rate or lora_alpha" in body["error"]["message"]
        # Not billed; what its training used is a cost all the same (kind compute).
        (row,) = UsageRecord.objects.unscoped().filter(event_id=job["id"])
        assert (row.kind, row.inputs, row.tokens) == ("compute", 0, 0) and row.compute_ms > 0
        assert client.get(f"/v1/fine-tunes/{job['id']}/events").status_code == 200

        after = start(client, dataset["id"], hyperparameters={"epochs": 1})
        done = wait(after["id"], lambda j: j.status in TERMINAL, timeout=60)
        assert done.status == "succeeded"
        assert redis.Redis.from_url(os.environ["REDIS_URL"]).llen(events_queue.name) == 0


def int8_id(model_id: str) -> str:
    return model_id.replace("ft:minilm-l6:", "ft:minilm-l6-int8:", 1)


def test_an_int8_variant_is_offered_served_billed_at_its_tier_and_deleted_with_its_model(
    http, tenant_secret
):
    with http(tenant_secret) as client:
        dataset = upload(client, TICKETS[:160])
        job = start(client, dataset["id"], suffix="tickets")
        wait(job["id"], lambda j: j.status in TERMINAL)
        body = client.get(f"/v1/fine-tunes/{job['id']}").json()
        assert body["status"] == "succeeded", body
        metrics, model = body["metrics"], body["fine_tuned_model"]
        assert model.startswith("ft:minilm-l6:tickets:")  # the job's model is the fp32 one
        assert {"int8_accuracy", "int8_macro_f1", "int8_per_label_f1"} <= set(metrics)
        assert metrics["int8_accuracy_delta"] >= -1.0, metrics  # the default threshold
        variant = int8_id(model)
        offered = [e for e in events(client, job["id"]) if e["message"].startswith("int8")]
        assert [e["data"].get("int8_model") for e in offered] == [
            None,
            variant,
        ]  # measured, offered
        assert "offered" in offered[-1]["message"]

        parent = client.get(f"/v1/models/{model}").json()
        assert parent["int8_variant"] == variant and parent["parent_model"] is None
        shown = client.get(f"/v1/models/{variant}").json()
        assert shown["parent_model"] == model and shown["base_model"] == "minilm-l6-int8"
        assert shown["accuracy_delta"] == metrics["int8_accuracy_delta"]
        assert shown["metrics"]["accuracy"] == metrics["int8_accuracy"]
        assert shown["labels"] == parent["labels"]
        assert variant in [m["id"] for m in client.get("/v1/models").json()["data"]]

        fp32 = client.post("/v1/classify", json={"model": model, "inputs": INPUTS})
        int8 = client.post("/v1/classify", json={"model": variant, "inputs": INPUTS})
        assert fp32.status_code == 200 and int8.status_code == 200, int8.text
        same = [
            a["label"] == b["label"]
            for a, b in zip(fp32.json()["results"], int8.json()["results"], strict=True)
        ]
        assert sum(same) >= 3 and int8.json()["model"] == variant
        # Not the fp32 model's cached answers: a result cache of its own.
        assert int8.json()["usage"]["cached"] == 0
        # A fine-tuned model needs no labels; the variant refuses them just the same.
        refused = client.post(
            "/v1/classify", json={"model": variant, "inputs": ["x"], "labels": ["a", "b"]}
        )
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "labels"

    # Billed under the variant's id, at the int8 tier.
    UsageConsumer(flush_interval=0.1).run(until_idle=True)
    rows = UsageRecord.objects.unscoped().filter(kind="inference")
    assert {r.model: r.inputs for r in rows} == {model: 4, variant: 4}
    tenant = AIModel.objects.unscoped().get(pk=model).tenant
    plan = Plan.objects.get(slug="pro", is_current=True)
    now = timezone.now()
    usage = billable_usage(
        tenant=tenant, plan=plan, start=now - timedelta(hours=1), end=now + timedelta(hours=1)
    )
    assert [segment.inputs for segment in usage.values()] == [{"standard": 4, "int8": 4}]

    # Another tenant: 404 for the variant, everywhere.
    with http(make_key(TenantFactory(), ["admin"])) as other:
        for method, path in [("GET", f"/v1/models/{variant}"), ("DELETE", f"/v1/models/{variant}")]:
            assert other.request(method, path).status_code == 404, (method, path)
        stolen = other.post("/v1/classify", json={"model": variant, "inputs": ["hi"]})
        assert stolen.status_code == 404

    with http(tenant_secret) as client:
        assert client.delete(f"/v1/models/{model}").status_code == 200
        for gone in (model, variant):
            assert client.get(f"/v1/models/{gone}").status_code == 404
            answer = client.post("/v1/classify", json={"model": gone, "inputs": ["hi"]})
            assert answer.status_code == 404


def test_an_int8_variant_that_loses_too_much_is_not_offered(http, tenant_secret, settings):
    # Any loss at all is too much with this threshold (it is read when the job succeeds).
    settings.FINETUNE_INT8_MAX_LOSS_POINTS = -100.0
    with http(tenant_secret) as client:
        dataset = upload(client, TICKETS[:80])
        job = start(client, dataset["id"])
        wait(job["id"], lambda j: j.status in TERMINAL)
        body = client.get(f"/v1/fine-tunes/{job['id']}").json()
        assert body["status"] == "succeeded" and "int8_accuracy_delta" in body["metrics"]
        model = body["fine_tuned_model"]
        said = [e["message"] for e in events(client, job["id"])]
        assert any(m.startswith("int8 variant not offered: it loses") for m in said), said
        assert client.get(f"/v1/models/{model}").json()["int8_variant"] is None
        assert client.get(f"/v1/models/{int8_id(model)}").status_code == 404
        answer = client.post("/v1/classify", json={"model": int8_id(model), "inputs": ["hi"]})
        assert answer.status_code == 404
        # The fp32 model is served as ever.
        assert (
            client.post("/v1/classify", json={"model": model, "inputs": ["hi"]}).status_code == 200
        )


def test_cancel_a_running_a_waiting_and_a_queued_job(http, tenant_secret):
    other = TenantFactory()
    subscribe(other, "pro")
    with http(tenant_secret) as client, http(make_key(other, ["admin"])) as theirs:
        dataset = upload(client, TICKETS)
        running = start(client, dataset["id"], method="lora", hyperparameters={"epochs": 5})
        waiting = start(client, dataset["id"])  # its tenant's slot is taken: not sent
        queued = start(theirs, upload(theirs, TICKETS[:80])["id"])  # sent, behind it
        for job, owner in ((waiting, client), (queued, theirs)):
            cancelled = owner.post(f"/v1/fine-tunes/{job['id']}/cancel").json()
            assert cancelled["status"] == "cancelled"

        wait(running["id"], lambda j: j.status == "running")
        assert client.post(f"/v1/fine-tunes/{running['id']}/cancel").json()["status"] == (
            "cancelled"
        )
        # The worker stops at its next step boundary and says so...
        wait(running["id"], lambda j: said(j.id, "training stopped"), 30)
        # ...then takes the queued job, sees the cancel and never starts it.
        wait(queued["id"], lambda j: said(j.id, "before it started"), 30)
        assert not [e for e in events(theirs, queued["id"]) if e["type"] in ("started", "progress")]
        # The waiting job was never sent, though the running one's end freed the slot.
        assert FineTuneJob.objects.unscoped().get(pk=waiting["id"]).dispatched_at is None
        ends = [e["type"] for e in events(client, waiting["id"]) if e["type"] != "log"]
        assert ends == ["cancelled"]  # its end, as an event of that type
        for job, owner in ((running, client), (waiting, client), (queued, theirs)):
            body = owner.get(f"/v1/fine-tunes/{job['id']}").json()
            assert body["status"] == "cancelled" and body["fine_tuned_model"] is None
    # The running job trained for a while: that is a cost, never billed; the others used
    # nothing.
    ends = UsageRecord.objects.unscoped().filter(event_id__in=[running["id"], waiting["id"],
                                                               queued["id"]])  # fmt: skip
    assert [(row.event_id, row.kind, row.tokens) for row in ends] == [(running["id"], "compute", 0)]
    assert ends[0].compute_ms > 0 and ends[0].cost_micros >= 0


def published(job_id: str, type: str, timeout: float = 90) -> dict[str, Any]:
    """Wait, without applying anything, until the worker has put ``type`` for the job on the
    job-events queue (as if the platform's consumer were lagging)."""
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for raw in client.lrange(events_queue.name, 0, -1):
            envelope = json.loads(raw)
            body = envelope["body"]
            if envelope["properties"].get("body_encoding") == "base64":
                body = base64.b64decode(body)
            event = json.loads(body)
            if event["job_id"] == job_id and event["type"] == type:
                return dict(event)
        time.sleep(0.2)
    pytest.fail(f"no {type} event for {job_id} in {timeout} s")


def test_a_job_cancelled_after_its_worker_finished_is_not_billed(http, tenant_secret):
    """The audit's case: the worker has finished and sent its success, the platform has not
    applied it yet (the job still reads queued), the user cancels. The cancel wins: no
    model, and nothing billed (before, the worker's own usage event billed it); what the
    training used is in the ledger as a cost, never billed (kind compute)."""
    with http(tenant_secret) as client:
        dataset = upload(client, TICKETS[:80])
        job = start(client, dataset["id"], hyperparameters={"epochs": 1})
        sent = published(job["id"], "succeeded")
        assert sent["data"]["usage"]["event_id"] == job["id"]
        assert client.get(f"/v1/fine-tunes/{job['id']}").json()["status"] == "queued"
        cancelled = client.post(f"/v1/fine-tunes/{job['id']}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        wait(job["id"], lambda j: said(j.id, "is ready"), 30)  # the success, applied late
        body = client.get(f"/v1/fine-tunes/{job['id']}").json()
        assert body["status"] == "cancelled" and body["fine_tuned_model"] is None
        assert all(m["type"] == "base" for m in client.get("/v1/models").json()["data"])
    UsageConsumer(flush_interval=0.1).run(until_idle=True)
    (row,) = UsageRecord.objects.unscoped().filter(event_id=job["id"])
    assert (row.kind, row.inputs, row.tokens) == ("compute", 0, 0)
    assert row.compute_ms == sent["data"]["usage"]["compute_ms"]


def test_a_killed_worker_is_retried_once_then_the_job_finishes(
    http, tenant_secret, training_worker
):
    with http(tenant_secret) as client:
        dataset = upload(client, TICKETS[:240])
        job = start(client, dataset["id"], method="lora", hyperparameters={"epochs": 2})
        # Running, and a heartbeat has said what the attempt used so far.
        beaten = wait(job["id"], lambda j: j.status == "running" and j.attempt_usage)
        training_worker.kill()  # kill -9, mid-job
        retried = wait(job["id"], lambda j: j.attempt == 2, 30)
        assert retried.status == "queued"
        # What the lost attempt used by its last heartbeat is a cost, never billed.
        (lost,) = UsageRecord.objects.unscoped().filter(event_id=f"{job['id']}:1")
        assert (lost.kind, lost.inputs, lost.tokens) == ("compute", 0, 0)
        assert lost.compute_ms >= beaten.attempt_usage["compute_ms"] > 0
        training_worker.start()  # a fresh worker takes the second attempt
        done = wait(job["id"], lambda j: j.status in TERMINAL, 120)
        assert done.status == "succeeded" and done.attempt == 2, done.error
        messages = [e["message"] for e in events(client, job["id"])]
        assert any("retrying from the start (attempt 2 of 2)" in m for m in messages)
