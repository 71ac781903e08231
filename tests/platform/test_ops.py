import re

import pytest
from django.urls import resolve
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


def test_metrics_token_when_set_is_required_and_compared_whole(settings):
    settings.METRICS_TOKEN = "scrape-secret"
    client = APIClient()
    for header in (None, "Bearer wrong", "Bearer scrape-secre", "Basic scrape-secret"):
        response = client.get("/metrics", **({"HTTP_AUTHORIZATION": header} if header else {}))
        assert response.status_code == 401, header
        assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'
        error = response.json()["error"]
        assert (error["type"], error["code"]) == ("authentication", "invalid_metrics_token")
        assert b"usage_events_total" not in response.content
    ok = client.get("/metrics", HTTP_AUTHORIZATION="bearer  scrape-secret")
    assert ok.status_code == 200 and b"usage_events_total" in ok.content
    # The probes stay open: an orchestrator calls them with no credentials.
    assert client.get("/healthz").status_code == 200


def test_metrics_count_requests_by_route_and_status_and_show_the_queue():
    from prometheus_client.parser import text_string_to_metric_families

    def samples():
        text = APIClient().get("/metrics").content.decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    route = (("method", "GET"), ("route", "v1/models/<str:model_id>"), ("status", "401"))
    unmatched = (("method", "GET"), ("route", "unmatched"), ("status", "404"))
    before = samples()
    for _ in range(3):
        APIClient().get("/v1/models/ft:x")  # no key: 401
    APIClient().get("/no/such/route/123")
    after = samples()
    key = "http_requests_total"
    assert after[(key, route)] - before.get((key, route), 0) == 3
    assert after[(key, unmatched)] - before.get((key, unmatched), 0) == 1
    count = ("http_request_duration_seconds_count", (("route", "v1/models/<str:model_id>"),))
    assert after[count] - before.get(count, 0) == 3
    assert ("inference_queue_messages", ()) in after
    assert not any("ft:x" in str(labels) for _, labels in after)  # ids name no series


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
        "/v1/openapi.json",
        "/v1/docs",
        "/v1/redoc",
    ]:
        assert path in paths, path
    # Each page's answer is of the type its operation says.
    for path, kind in [("/v1/openapi.json", "application/vnd.oai.openapi+json"),
                       ("/v1/docs", "text/html"), ("/v1/redoc", "text/html")]:  # fmt: skip
        assert kind in paths[path]["get"]["responses"]["200"]["content"]
        assert APIClient().get(path)["Content-Type"].startswith(kind)
    classify = paths["/v1/classify"]["post"]
    assert {"200", "400", "401", "403", "404", "409", "413", "503"} <= set(classify["responses"])
    error = schema["components"]["schemas"]["Error"]
    assert error["properties"]["error"]
    assert "ApiKeyAuth" in schema["components"]["securitySchemes"]


def test_openapi_documents_the_headers_every_answer_carries():
    schema = APIClient().get("/v1/openapi.json").json()
    for path, operations in schema["paths"].items():
        if not path.startswith("/v1/") or path in ("/v1/openapi.json", "/v1/docs", "/v1/redoc"):
            continue  # probes, metrics, the webhook, the docs: no API key, so no rate limit
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                headers = response.get("headers", {})
                assert headers["X-Request-Id"]["required"] is True, (path, method, status)
                if status.startswith("2") or status == "429":
                    assert {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} <= set(
                        headers
                    ), (path, method, status)
            assert operation["responses"]["429"]["headers"]["Retry-After"]["required"] is True
            assert "406" in operation["responses"]
    classify = schema["paths"]["/v1/classify"]["post"]["responses"]["200"]["headers"]
    assert "Idempotent-Replayed" in classify
    # Every bound the server enforces is in the document, a list of examples' included.
    examples = schema["components"]["schemas"]["ClassifyRequestRequest"]["properties"]["examples"]
    assert examples["maxItems"] == 256


def test_the_routes_outside_v1_are_in_the_document_too():
    schema = APIClient().get("/v1/openapi.json").json()
    paths = schema["paths"]
    assert set(paths["/healthz"]) == set(paths["/readyz"]) == set(paths["/metrics"]) == {"get"}
    assert set(paths["/readyz"]["get"]["responses"]) == {"200", "503", "405"}
    assert "text/plain" in paths["/metrics"]["get"]["responses"]["200"]["content"]
    webhook = paths["/webhooks/stripe"]["post"]
    # Its credential is the Stripe-Signature header (no API key): a 401 without a good one.
    (scheme,) = (name for requirement in webhook["security"] for name in requirement)
    assert schema["components"]["securitySchemes"][scheme] == {
        **schema["components"]["securitySchemes"][scheme],
        "type": "apiKey", "in": "header", "name": "Stripe-Signature",
    }  # fmt: skip
    assert set(webhook["responses"]) == {"200", "400", "401", "405", "413"}


def _request_objects(schema):
    """Every object schema a request body can hold, nested ones included."""
    components = schema["components"]["schemas"]
    return {name: body for name, body in components.items() if name.endswith("Request")}


def test_openapi_says_what_a_request_may_hold():
    # What the server refuses with a 400 must not be valid by the published schema: a
    # schema fuzzer holds the two to each other.
    schema = APIClient().get("/v1/openapi.json").json()
    for name, body in _request_objects(schema).items():
        if body.get("type") == "object":
            assert body.get("additionalProperties") is False, name  # unknown parameter: 400
            for field, spec in body["properties"].items():
                if spec.get("type") == "string" and "enum" not in spec:
                    assert "pattern" in spec or "format" in spec, (name, field)  # NUL: 400
    classify = schema["components"]["schemas"]["ClassifyRequestRequest"]["properties"]
    text = classify["inputs"]["items"]
    assert "oneOf" not in text and text["minLength"] == 1  # "" is an empty_input 400
    assert re.fullmatch(text["pattern"], "a b") and not re.fullmatch(text["pattern"], " \t")
    assert not re.fullmatch(text["pattern"], "a\x00")
    # A head takes no LoRA hyperparameters; target modules are named.
    fine_tune = schema["paths"]["/v1/fine-tunes"]["post"]["requestBody"]
    assert fine_tune["required"] is True
    shapes = schema["components"]["schemas"]["FineTuneCreateRequestRequest"]["oneOf"]
    assert len(shapes) == 2
    head = schema["components"]["schemas"]["HeadHyperparametersRequest"]["properties"]
    assert set(head) == {"epochs", "learning_rate", "batch_size"}
    assert schema["components"]["schemas"]["TargetModulesEnum"]["enum"] == [
        "query", "key", "value"
    ]  # fmt: skip


@pytest.mark.parametrize(
    "path",
    [
        "/v1/api-keys",
        "/v1/models",
        "/v1/datasets",
        "/v1/fine-tunes",
        "/v1/fine-tunes/{job_id}/events",
        "/v1/invoices",
    ],
)
def test_every_list_documents_its_cursor_parameters(path):
    schema = APIClient().get("/v1/openapi.json").json()
    parameters = {p["name"]: p["schema"] for p in schema["paths"][path]["get"]["parameters"]}
    assert parameters["limit"] == {"type": "integer", "minimum": 1, "maximum": 100}
    assert parameters["starting_after"]["type"] == "string"


def test_each_view_takes_the_query_parameters_it_documents():
    # TenantAPIView refuses every query parameter its view does not declare: the
    # declaration and the OpenAPI document must not drift apart.
    schema = APIClient().get("/v1/openapi.json").json()
    for path, operations in schema["paths"].items():
        if not path.startswith("/v1/"):
            continue  # plain Django views, which read no query
        view = resolve(re.sub(r"\{[^}]+\}", "x", path)).func.view_class
        for method, operation in operations.items():
            documented = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
            declared = getattr(view, "query_parameters", {}).get(method.upper(), frozenset())
            assert documented == set(declared), (method, path)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path", ["/v1/models?foo=1", "/v1/usage?=", "/v1/usage?format=json", "/v1/plans?page=2"]
)
def test_an_unknown_query_parameter_is_refused_by_name(api, path):
    response = api.get(path)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "unknown_parameter"
    assert error["param"] == path.split("?")[1].split("=")[0]


@pytest.mark.django_db
def test_options_and_undeclared_methods_are_not_judged_by_their_query(api):
    options = api.options("/v1/models?limit=1")
    assert options.status_code == 200 and options.json() == {}  # no view names, no parsers
    assert set(options["Allow"].replace(" ", "").split(",")) == {"GET", "HEAD", "OPTIONS"}
    assert api.put("/v1/models?limit=1").status_code == 405


def test_docs_page_renders():
    response = APIClient().get("/v1/docs")
    assert response.status_code == 200
    assert b"swagger" in response.content.lower()
    # The pages whatever Accept says, as the document: a tool's Accept: application/json
    # was a 406 in HTML, which the document does not describe.
    for path in ("/v1/docs", "/v1/redoc"):
        page = APIClient().get(path, HTTP_ACCEPT="application/json")
        assert page.status_code == 200 and page["Content-Type"].startswith("text/html")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path", ["/healthz", "/readyz", "/metrics", "/v1/docs", "/v1/redoc", "/v1/openapi.json"]
)
def test_routes_outside_the_api_take_get_and_answer_other_methods_in_json(path):
    client = APIClient(enforce_csrf_checks=True)
    assert client.get(path).status_code == 200
    options = client.options(path)
    assert options.status_code == 200 and options["Allow"] == "GET, HEAD, OPTIONS"
    for method in ("post", "put", "delete"):
        response = getattr(client, method)(path)
        assert response.status_code == 405, (method, path)
        assert response.json()["error"]["code"] == "method_not_allowed"  # not an HTML page


def test_a_consumer_serves_its_own_series_on_metrics_port(tmp_path):
    """In a cluster each process is scraped on its own: the usage consumer's counters
    (events stored, rejected) are on METRICS_PORT, not in the API's /metrics."""
    import os
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "METRICS_PORT": str(port), "DATABASE_URL": f"sqlite:///{tmp_path}/x"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    process = subprocess.Popen(
        [sys.executable, str(root / "manage.py"), "consume_usage", "--name", "metrics-test"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.2)
        assert "usage_events_total" in body
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_metrics_port_is_left_alone_under_make_run_and_a_bad_one_says_so(monkeypatch, tmp_path):
    """make run's children inherit the shell's METRICS_PORT: three servers on one port would
    stop the stack, and the API's /metrics adds them up there already."""
    from ops.metrics import metrics_serve_from_env

    monkeypatch.setenv("METRICS_PORT", "1")  # a port no test process may bind
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert metrics_serve_from_env() is None
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    monkeypatch.setenv("METRICS_PORT", "nine-thousand")
    with pytest.raises(ValueError, match="METRICS_PORT must be a port number"):
        metrics_serve_from_env()


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        ("text/html", "application/vnd.oai.openapi+json"),
        ("application/json", "application/json"),
        ("*/*", "application/vnd.oai.openapi+json"),
    ],
)
def test_the_document_is_served_whatever_accept_names(accept, content_type):
    """A browser's Accept got a 406 the document did not describe; application/json got a
    content type it did not list."""
    response = APIClient().get("/v1/openapi.json", HTTP_ACCEPT=accept)
    assert response.status_code == 200 and response["Content-Type"] == content_type
    documented = response.json()["paths"]["/v1/openapi.json"]["get"]["responses"]["200"]
    assert content_type in documented["content"]


def test_openapi_says_what_every_operation_does():
    """The docs pages show each operation's summary and description: none is left blank,
    and the table they come from names no operation that does not exist."""
    from core.operation_docs import DOCS

    schema = APIClient().get("/v1/openapi.json").json()
    operations = {
        op["operationId"]: op
        for path, ops in schema["paths"].items()
        for op in ops.values()
        if isinstance(op, dict) and "operationId" in op
    }
    pages = {"/v1/openapi.json", "/v1/docs", "/v1/redoc"}  # (they describe the rest)
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            assert op.get("summary"), f"{method} {path} has no summary"
            if path.startswith("/v1/") and path not in pages:
                assert op.get("description"), f"{method} {path} has no description"
    assert set(DOCS) <= set(operations)
    assert operations["classify"]["summary"] == "Classify texts"
    assert "idempotency-key" in operations["classify"]["description"].lower()


@pytest.mark.django_db
def test_a_method_a_route_does_not_serve_is_405_to_any_key_and_head_needs_gets_scope(tenant):
    """A route whose every method needs one scope answered an under-scoped key's PUT with
    403 where the other routes said 405 (an audit); HEAD is GET without the body."""
    from tests.factories import make_key

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {make_key(tenant, ['inference'])}")
    for path in ("/v1/api-keys", "/v1/subscription", "/v1/fine-tunes", "/v1/plans"):
        assert client.put(path, {}, format="json").status_code == 405, path
        assert client.options(path).status_code == 200, path
    assert client.generic("HEAD", "/v1/api-keys").status_code == 403
    assert client.generic("HEAD", "/v1/plans").status_code == 403  # billing, as its GET
    assert client.get("/v1/plans").status_code == 403
    assert client.generic("HEAD", "/v1/models").status_code == 200


def test_openapi_names_the_scope_each_operation_needs():
    """An outside checker met 403s that only DELETE /v1/models/{id} explained."""
    schema = APIClient().get("/v1/openapi.json").json()
    classify = schema["paths"]["/v1/classify"]["post"]
    assert classify["x-required-scope"] == "inference"
    assert classify["description"].endswith("Needs a key with the `inference` scope (an `admin`"
                                            " key has every scope).")  # fmt: skip
    assert "`inference` scope" in classify["responses"]["403"]["description"]
    keys = schema["paths"]["/v1/api-keys"]["post"]
    assert keys["description"].endswith("Needs a key with the `admin` scope.")
    usage = schema["paths"]["/v1/usage"]["get"]
    assert usage["x-required-scope"] == "billing"
    # A fuzzer's examples phase has a call that runs (no model it could guess exists).
    examples = classify["requestBody"]["content"]["application/json"]["examples"]
    assert {e["value"]["model"] for e in examples.values()} == {"minilm-l6"}
