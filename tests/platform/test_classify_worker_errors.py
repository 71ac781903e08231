"""A worker's error answer, as the caller hears it: a request a worker took past its deadline
is the worker timeout any unanswered call is (it was a 503 "The inference worker failed",
code "expired"); a fine-tuned model deleted while its call was on the way is the 404 every
call to it gets from then on (it was a 503 inviting a retry that could only 404); a model a
worker cannot serve is still a 503 to retry."""

from __future__ import annotations

import pytest
from django.utils import timezone

from core.errors import NotFound, Overloaded
from inference.models import AIModel
from inference.services import _response
from workers.errors import EXPIRED, MODEL_UNAVAILABLE, error_result

pytestmark = pytest.mark.django_db


@pytest.fixture
def model(tenant):
    return AIModel.objects.create(
        id="ft:minilm-l6:acme:errors", tenant=tenant, kind="fine_tuned", base_model="minilm-l6",
        labels=["a", "b"], artifact="f" * 64,
    )  # fmt: skip


def _answer(code: str):
    return error_result({"request_id": "req_x", "model": "m"}, code, "from the worker")  # type: ignore[typeddict-item]


def test_an_answer_past_its_deadline_is_the_worker_timeout(model):
    with pytest.raises(Overloaded) as raised:
        _response(_answer(EXPIRED), request_id="req_x", model=model)
    assert raised.value.code == "worker_timeout"
    assert raised.value.message.startswith("No inference worker answered")
    assert raised.value.headers == {"Retry-After": "1"}


def test_a_model_deleted_on_the_way_is_a_404_and_one_a_worker_cannot_load_a_503(model):
    with pytest.raises(Overloaded) as raised:  # still there: the worker's trouble, retry
        _response(_answer(MODEL_UNAVAILABLE), request_id="req_x", model=model)
    assert raised.value.code == MODEL_UNAVAILABLE
    AIModel.objects.unscoped().filter(pk=model.pk).update(deleted_at=timezone.now())
    with pytest.raises(NotFound) as gone:
        _response(_answer(MODEL_UNAVAILABLE), request_id="req_x", model=model)
    assert (gone.value.code, gone.value.param) == ("model_not_found", "model")


def test_a_rule_only_the_worker_held_is_a_400_not_a_503_to_retry(model, tenant):
    """More than 100 distinct labels in examples, checked only by the worker: a 503 "retry
    after a short wait" that failed every retry (an audit). The API refuses it first now;
    any other rule the worker holds reaches the caller as the 400 it is."""
    from rest_framework.test import APIClient

    from core.errors import InvalidRequest
    from tests.factories import make_key
    from workers.errors import INVALID_REQUEST

    with pytest.raises(InvalidRequest) as raised:
        _response(_answer(INVALID_REQUEST), request_id="req_x", model=model)
    assert (raised.value.status, raised.value.message) == (400, "from the worker")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {make_key(tenant, ['inference'])}")
    examples = [{"text": f"text {i}", "label": f"label {i}"} for i in range(101)]
    body = {"model": "minilm-l6", "inputs": ["x"], "examples": examples}
    response = client.post("/v1/classify", body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["param"] == "examples"
    assert "101 distinct labels" in response.json()["error"]["message"]


def test_a_model_the_operator_disabled_is_a_503_with_a_retry_after(tenant):
    from rest_framework.test import APIClient

    from inference import selectors
    from tests.factories import make_key

    AIModel.objects.unscoped().filter(pk="minilm-l6").update(status=AIModel.Status.DISABLED)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {make_key(tenant, ['inference'])}")
    body = {"model": "minilm-l6", "inputs": ["x"], "labels": ["a", "b"]}
    selectors._base_models.clear()  # (this process's copy, re-read every few seconds)
    try:
        response = client.post("/v1/classify", body, format="json")
    finally:
        selectors._base_models.clear()  # (ready again for the next test: a rollback)
    assert response.status_code == 503 and response["Retry-After"] == "60"
    assert response.json()["error"]["code"] == "model_not_ready"
