import pytest
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


def test_healthz_and_readyz_answer_without_a_key():
    client = APIClient()
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert {name: check["ok"] for name, check in ready.json()["checks"].items()} == {
        "database": True,
        "broker": True,
        "cache": True,
    }


def test_metrics_are_prometheus_text():
    response = APIClient().get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert b"usage_events_total" in response.content


def test_openapi_describes_every_public_route():
    response = APIClient().get("/v1/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    paths = schema["paths"]
    for path in [
        "/v1/classify",
        "/v1/models",
        "/v1/models/{model_id}",
        "/v1/api-keys",
        "/v1/api-keys/{key_id}",
        "/v1/api-keys/{key_id}/rotate",
        "/v1/usage",
    ]:
        assert path in paths, path
    classify = paths["/v1/classify"]["post"]
    assert {"200", "400", "401", "403", "404", "409", "413", "503"} <= set(classify["responses"])
    error = schema["components"]["schemas"]["Error"]
    assert error["properties"]["error"]
    assert "ApiKeyAuth" in schema["components"]["securitySchemes"]


def test_docs_page_renders():
    response = APIClient().get("/v1/docs")
    assert response.status_code == 200
    assert b"swagger" in response.content.lower()
