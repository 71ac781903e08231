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
