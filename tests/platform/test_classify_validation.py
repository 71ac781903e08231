"""Every bad /v1/classify request is refused before it reaches a worker, in the contract's
error shape with the right status and parameter; no worker runs in these tests."""

import pytest

pytestmark = pytest.mark.django_db

OK = {"model": "minilm-l6", "inputs": ["hello"], "labels": ["a", "b"]}
EXAMPLE = {"text": "y", "label": "b"}
BLANK_TEXT = {"text": " ", "label": "a"}
INVISIBLE_LABEL = {"text": "u", "label": "\u200b"}


@pytest.mark.parametrize(
    ("change", "status", "param"),
    [
        ({"inputs": []}, 400, "inputs"),
        ({"inputs": ["x"] * 97}, 400, "inputs"),
        # Refused for its length before its items: 500,000 numbers took 9.4 s to refuse,
        # 5,000,000 over a minute and gigabytes of the API's memory, item by item.
        ({"inputs": [1] * 1_000_000}, 400, "inputs"),
        ({"labels": [None] * 1_000_000}, 400, "labels"),
        ({"inputs": "hello"}, 400, "inputs"),
        ({"inputs": [1]}, 400, "inputs[0]"),
        ({"inputs": ["ok", None]}, 400, "inputs[1]"),
        ({"inputs": ["ok", {"t": 1}]}, 400, "inputs[1]"),
        ({"inputs": ["ok", "   "]}, 400, "inputs[1]"),
        ({"inputs": ["ok", "\u2060\u00ad"]}, 400, "inputs[1]"),  # billed as empty texts once
        ({"inputs": ["\u200b \u200b", "ok"]}, 400, "inputs[0]"),
        ({"inputs": ["\ufeff"]}, 400, "inputs[0]"),
        ({"inputs": ["\u0300\ufe0f \u3164\ufff9"]}, 400, "inputs[0]"),
        # Private use and the replacement character: the tokenizer drops them too.
        ({"inputs": ["ok", "\ue000\uf8ff \ufffd"]}, 400, "inputs[1]"),
        ({"inputs": ["ok", "x" * 10_001]}, 413, "inputs[1]"),
        ({"model": None}, 400, "model"),
        ({"model": 5}, 400, "model"),
        ({"model": "no-such-model"}, 404, "model"),
        # An unknown model is said first, whatever else is wrong with the body: no fix to
        # the rest would make the call run (and a schema fuzzer's models are unknown ones).
        ({"model": "no-such-model", "examples": [{"text": "t", "label": "c"}]}, 404, "model"),
        ({"model": "no-such-model", "inputs": []}, 404, "model"),
        ({"model": "no\u0000model", "inputs": []}, 400, "model"),  # no lookup of a NUL
        ({"labels": ["only-one"]}, 400, "labels"),
        ({"labels": ["a", "a"]}, 400, "labels[1]"),
        # One class to the uncased encoder: its score was split between them, 50/50.
        ({"labels": ["Coffee", "tea", "coffee"]}, 400, "labels[2]"),
        ({"labels": ["pos", "neg", "pos "]}, 400, "labels[2]"),
        ({"labels": ["caf\u00e9", "cafe\u0301"]}, 400, "labels[1]"),  # NFC and NFD
        ({"labels": ["cafe", "CAF\u00c9"]}, 400, "labels[1]"),
        # With examples: the labels without any are still embedded from their names.
        ({"labels": ["a", "b", "Tea", "tea"], "examples": [EXAMPLE]}, 400, "labels[3]"),
        (
            {
                "labels": None,
                "examples": [{"text": "x" * 10_000, "label": "ab"[i % 2]} for i in range(11)],
            },
            413,
            "examples",
        ),  # 110,000 characters of examples: ~7 s of a worker at 256 of them, billed as one input
        ({"labels": ["a", ""]}, 400, "labels[1]"),
        ({"labels": ["a", "   "]}, 400, "labels[1]"),  # was classified, against nothing
        ({"labels": ["\u200b", "b"]}, 400, "labels[0]"),
        ({"labels": None}, 400, "labels"),  # a base model needs labels or examples
        ({"labels": None, "examples": [{"text": "t", "label": "a"}]}, 400, "examples"),
        ({"examples": [{"text": "t", "label": "c"}]}, 400, "examples[0].label"),
        ({"labels": None, "examples": [{"text": "t"}]}, 400, "examples[0].label"),
        ({"examples": [None]}, 400, "examples[0]"),  # was a 500
        # Nothing visible in an example's text or label (the fuzz audit's 0.5/0.5 answer).
        (
            {"labels": None, "examples": [BLANK_TEXT, {"text": "t", "label": "b"}]},
            400,
            "examples[0].text",
        ),
        (
            {"labels": None, "examples": [{"text": "t", "label": "a"}, INVISIBLE_LABEL]},
            400,
            "examples[1].label",
        ),
        ({"labels": None, "examples": [{"text": "t", "label": "a"}, None]}, 400, "examples[1]"),
        ({"temperature": 0.5}, 400, "temperature"),
        ({"examples": ["x", "y"]}, 400, "examples[0]"),
        ({"examples": [{"text": "t", "label": "a"}, {**EXAMPLE, "z": 1}]}, 400, "examples[1].z"),
    ],
)
def test_bad_input_is_refused_with_the_right_status(api, change, status, param):
    body = {**OK, **change}
    response = api.post("/v1/classify", body, format="json")
    assert response.status_code == status, response.json()
    error = response.json()["error"]
    assert error["param"] == param
    assert error["type"] == {400: "invalid_request", 404: "not_found", 413: "too_large"}[status]
    assert error["message"] and "request body" not in error["message"]


def test_missing_fields_are_named(api):
    response = api.post("/v1/classify", {"inputs": ["x"], "labels": ["a", "b"]}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "model"


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"text"', b""])
def test_a_body_that_is_not_a_json_object_is_a_400(api, raw):
    response = api.post("/v1/classify", raw, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request"


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b'{"model": "minilm-l6", "inputs": ["x"], "labels": ["a", "b"], "model": "m2"}', "model"),
        # Named where it is, as other errors in examples are (it said "text").
        (b'{"model": "minilm-l6", "inputs": ["x"], "examples": [{"text": "t", "label": "a"},'
         b' {"text": "t", "label": "a", "text": "u"}]}', "examples[1].text"),
        (b'{"model": "minilm-l6", "inputs": ["x"], "labels": ["a", "b"], "z": {"y": [{"x": 1,'
         b' "x": 2}]}}', "z.y[0].x"),
    ],
)  # fmt: skip
def test_a_member_named_twice_is_refused_not_read_as_the_last(api, raw, param):
    response = api.post("/v1/classify", raw, content_type="application/json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("duplicate_parameter", param)


def test_a_query_parameter_given_twice_is_refused(api):
    response = api.get("/v1/usage?group_by=day&group_by=model")
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("duplicate_parameter", "group_by")
    assert api.get("/v1/api-keys?limit=1&limit=2").json()["error"]["param"] == "limit"


@pytest.mark.parametrize("path", ["/v1/classify", "/v1/api-keys", "/v1/subscription"])
def test_a_null_body_is_not_an_object_either(api, path):
    response = api.post(path, b"null", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request_body"


@pytest.mark.parametrize("path", ["/v1/classify", "/v1/api-keys", "/v1/fine-tunes"])
@pytest.mark.parametrize("raw", [b"[" * 5000 + b"]" * 5000, b'{"a":' * 5000 + b"1" + b"}" * 5000])
def test_json_nested_beyond_the_parser_is_a_400_not_a_500(api, path, raw):
    response = api.post(path, raw, content_type="application/json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid_json" and "nested too deeply" in error["message"]


@pytest.mark.parametrize("path", ["/v1/classify", "/v1/api-keys", "/v1/fine-tunes/ftjob_x/cancel"])
@pytest.mark.parametrize("levels", [65, 600])
def test_json_nested_past_64_levels_is_a_400_with_or_without_an_idempotency_key(api, path, levels):
    """Nested 600 deep the body parsed, and hashing it for the Idempotency-Key was a 500."""
    deep = "[" * levels + "]" * levels
    body = '{"model":"minilm-l6","inputs":["x"],"labels":["a","b"],"examples":' + deep + "}"
    for headers in ({}, {"HTTP_IDEMPOTENCY_KEY": f"deep-{levels}"}):
        response = api.post(path, body.encode(), content_type="application/json", **headers)
        assert response.status_code == 400, response.content
        error = response.json()["error"]
        assert error["code"] == "invalid_json" and "over 64 levels" in error["message"]
    shallow = "[" * 2 + "]" * 2  # what the contract's bodies nest to is still read
    ok = api.post("/v1/classify", ('{"inputs":["x"],"labels":' + shallow + "}").encode(),
                  content_type="application/json")  # fmt: skip
    assert ok.json()["error"]["code"] != "invalid_json"


def test_wrong_content_type_is_415(api):
    response = api.post("/v1/classify", b"inputs=x", content_type="text/plain")
    assert response.status_code == 415
    assert response.json()["error"]["type"] == "invalid_request"


@pytest.mark.parametrize(
    ("accept", "status"),
    [
        (None, 400),
        ("*/*", 400),
        ("application/json", 400),
        ("application/json; charset=utf-8", 400),
        ("text/html, application/json;q=0.9", 400),
        ("text/html", 406),
        ("application/xml", 406),
    ],
)
def test_every_answer_is_json_and_an_accept_the_api_cannot_produce_is_a_406(api, accept, status):
    headers = {} if accept is None else {"HTTP_ACCEPT": accept}
    response = api.post("/v1/classify", {**OK, "inputs": []}, format="json", **headers)
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["type"] == "invalid_request"


def test_a_request_without_a_valid_key_is_a_401_whatever_it_accepts(api):
    from rest_framework.test import APIClient

    for credentials in ({}, {"HTTP_AUTHORIZATION": "Bearer sk_live_nope"}):
        response = APIClient().get("/v1/models", HTTP_ACCEPT="text/html", **credentials)
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication"
    assert api.get("/v1/models", HTTP_ACCEPT="text/html").status_code == 406


def test_classify_needs_the_inference_scope(tenant, client_for):
    response = client_for(tenant, ["billing"]).post("/v1/classify", OK, format="json")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "insufficient_scope"


def test_get_on_classify_is_405_in_the_error_shape(api):
    response = api.get("/v1/classify")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize("model", ["\\ud800", "ft:\\ud800x", "mini\\udfffx"])
def test_a_model_id_with_half_a_surrogate_pair_is_a_400_not_looked_up(api, model):
    """JSON can carry one (escaped); the database cannot take it, so it is never looked up:
    the unknown-model check that comes first was a 500 for it."""
    body = '{"model": "' + model + '", "inputs": []}'
    response = api.post("/v1/classify", body, content_type="application/json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["param"] == "model"


def test_unknown_route_is_a_json_404(api):
    response = api.get("/v1/nope")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"
    assert response["X-Request-Id"].startswith("req_")


@pytest.mark.parametrize(
    ("method", "path", "body", "param"),
    [
        ("post", "/v1/classify",
         {"model": "minilm-l6", "inputs": ["x"], "labels": ["a\u0000", "b"]}, "labels[0]"),
        ("post", "/v1/classify", {"model": "minilm-l6\u0000", "inputs": ["x"]}, "model"),
        ("post", "/v1/api-keys", {"name": "n\u0000", "scopes": ["inference"]}, "name"),
        ("get", "/v1/usage?group_by=day%00", None, "group_by"),
    ],
)  # fmt: skip
def test_nul_characters_are_bad_input_not_a_server_error(api, method, path, body, param):
    # PostgreSQL cannot store or compare text containing NUL: without this guard these
    # were 500s there.
    response = getattr(api, method)(path, body, format="json") if body else api.get(path)
    assert response.status_code == 400, response.content
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/v1/models/ft%00x", "id"),
        ("/v1/api-keys/key_%00", "id"),
        ("/v1/fine-tunes/ftjob_%00", "id"),
        ("/v1/api-keys?starting_after=key%00", "starting_after"),
    ],
)
def test_an_id_with_nul_in_it_is_no_object(api, path, param):
    # No object has such an id: a 404 like any unknown id (the OpenAPI document's ids are
    # plain strings), not a database error.
    response = api.get(path)
    assert response.status_code == 404, response.content
    assert response.json()["error"]["param"] == param


PARITY_BODIES = [
    OK,
    {**OK, "labels": None},
    {"model": "minilm-l6", "inputs": ["hello"]},
    {**OK, "inputs": ["x" * 10_000, "  padded  ", "ünïcödé ☃"]},
    {**OK, "inputs": ["x"] * 96, "labels": [f"l{i}" for i in range(100)]},
    {**OK, "labels": [" a ", "b"]},
    {**OK, "model": "  "},
    {**OK, "model": "m" * 200},
    {**OK, "examples": [{"text": "t", "label": "a"}]},
    # Every one of these is refused by the serializer.
    {**OK, "inputs": []},
    {**OK, "inputs": ["x"] * 97},
    {**OK, "inputs": ["x" * 10_001]},
    {**OK, "inputs": ["ok", ""]},
    {**OK, "inputs": ["ok", " \t\n"]},
    {**OK, "inputs": ["ok", "\u200b\u2060\ufeff\u00ad"]},
    {**OK, "inputs": ["\u200bvisible\u200b"]},
    {**OK, "inputs": ["ok", "\u05b0\u05b1\u064b"]},  # marks the tokenizer drops, alone
    {**OK, "inputs": ["bad\x00nul"]},
    {**OK, "inputs": ["lone \ud800 surrogate"]},
    {**OK, "inputs": [1]},
    {**OK, "inputs": "hello"},
    {**OK, "model": ""},
    {**OK, "model": "m" * 201},
    {**OK, "model": 5},
    {**OK, "labels": ["a"]},
    {**OK, "labels": []},
    {**OK, "labels": ["a", "a"]},
    {**OK, "labels": ["a", ""]},
    {**OK, "labels": ["  ", "b"]},
    {**OK, "labels": ["a", "\u2060"]},
    {**OK, "labels": ["a", 1]},
    {**OK, "labels": ["a", "b" * 201]},
    {**OK, "labels": [f"l{i}" for i in range(101)]},
    {**OK, "labels": "a,b"},
    {**OK, "temperature": 0.5},
    {"inputs": ["x"], "labels": ["a", "b"]},
]


@pytest.mark.parametrize("body", PARITY_BODIES)
def test_the_fast_path_accepts_only_what_the_serializer_accepts_and_returns_the_same(body):
    from rest_framework.exceptions import ValidationError

    from core.errors import APIError
    from core.serializers import validated
    from inference.serializers import ClassifyRequestSerializer, classify_request_fast

    fast = classify_request_fast(body)
    try:
        slow = validated(ClassifyRequestSerializer, body)
    except (APIError, ValidationError):
        assert fast is None
        return
    if fast is not None:
        assert fast == slow


def test_the_fast_path_takes_the_common_request():
    from inference.serializers import classify_request_fast

    assert classify_request_fast(OK) == OK


def test_the_largest_valid_request_fits_the_body_limit_and_a_bigger_body_says_the_limit(api):
    """96 inputs of 10,000 emoji, as json.dumps writes them by default (\\ud83d\\ude00: 12
    bytes each), are 11.5 MB: within the limit (no 413 for the body; the model answers or
    the request fails on something else). A body over it names the limit."""
    import json

    from django.conf import settings

    body = json.dumps({"model": "no-such-model", "inputs": ["\U0001f600" * 10_000] * 96})
    assert len(body) > 11_000_000
    fits = api.post("/v1/classify", body, content_type="application/json")
    assert fits.status_code == 404, fits.content[:300]  # read and validated: model unknown
    over = api.post(
        "/v1/classify", " " * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1) + "{}",
        content_type="application/json",
    )  # fmt: skip
    assert over.status_code == 413
    assert f"{settings.DATA_UPLOAD_MAX_MEMORY_SIZE:,} bytes" in over.json()["error"]["message"]


def test_a_null_value_is_an_invalid_parameter_not_a_missing_one(api):
    response = api.post("/v1/classify", {**OK, "model": None}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_parameter"
    assert response.json()["error"]["param"] == "model"
    missing = api.post("/v1/classify", {"inputs": ["x"], "labels": ["a", "b"]}, format="json")
    assert missing.json()["error"]["code"] == "missing_parameter"


def test_a_field_error_names_its_parameter_in_the_message(api):
    """One error among several fields: the message says which (DRF's said "this field")."""
    empty = api.post("/v1/classify", {"model": "minilm-l6", "inputs": []}, format="json")
    assert empty.json()["error"]["message"] == "inputs must hold at least 1 item."
    many = api.post(
        "/v1/classify", {"model": "minilm-l6", "inputs": ["a"] * 97, "labels": ["a", "b"]},
        format="json",
    )  # fmt: skip
    assert many.json()["error"]["message"] == "inputs must hold at most 96 items."
    missing = api.post("/v1/classify", {"model": "minilm-l6"}, format="json")
    assert missing.json()["error"]["message"] == "Missing required parameter: inputs."
    typed = api.post(
        "/v1/classify", {"model": "minilm-l6", "inputs": [1], "labels": ["a", "b"]}, format="json"
    )
    error = typed.json()["error"]
    assert (error["param"], error["message"]) == ("inputs[0]", "inputs[0]: Must be a string.")


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        (OK, True),
        (
            {
                "model": "minilm-l6",
                "inputs": ["hi"],
                "examples": [EXAMPLE, {"text": "x", "label": "a"}],
            },
            True,
        ),
        ({"model": "ft:minilm-l6:x:abc", "inputs": ["hello"]}, True),
        # What the API refuses, 400 missing_labels, the document refuses too: a schema
        # fuzzer took it for valid, and flagged the refusal.
        ({"model": "minilm-l6", "inputs": ["hello"]}, False),
        ({"model": "minilm-l6-int8", "inputs": ["hello"], "labels": None}, False),
    ],
)
def test_the_published_schema_says_a_base_model_needs_labels_or_examples(client, body, valid):
    import jsonschema

    doc = client.get("/v1/openapi.json").json()
    ref = doc["paths"]["/v1/classify"]["post"]["requestBody"]["content"]["application/json"]
    validator = jsonschema.Draft7Validator({**ref["schema"], "components": doc["components"]})
    assert validator.is_valid(body) is valid
