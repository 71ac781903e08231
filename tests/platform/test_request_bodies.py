"""Bodies as clients send them: chunked, compressed, mislabelled. Called through the WSGI
application the API server runs (``config.wsgi``), with the environ granian hands it: a
chunked body arrives de-chunked, with ``HTTP_TRANSFER_ENCODING`` and no ``CONTENT_LENGTH``
(checked against granian by hand)."""

from __future__ import annotations

import gzip
import io
import json
import sys
import zlib
from typing import Any

import pytest
from django.core.signals import request_finished, request_started
from django.db import close_old_connections

from apikeys.models import ApiKey
from config.wsgi import application
from tests.factories import make_key

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _keep_the_test_database_open():
    """As Django's test client does: a request's end must not close the test's connection."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def call(secret: str, body: bytes, path: str = "/v1/api-keys", **headers: str) -> tuple[int, Any]:
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "CONTENT_TYPE": headers.pop("content_type", "application/json"),
        "HTTP_AUTHORIZATION": f"Bearer {secret}",
        **headers,
    }
    status: list[str] = []
    chunks = application(environ, lambda s, h, *_: status.append(s))
    payload = b"".join(chunks)
    return int(status[0].split()[0]), json.loads(payload)


KEY = json.dumps({"name": "from a stream", "scopes": ["inference"]}).encode()


def test_a_whole_response_goes_back_as_a_list_and_is_closed_first(tenant):
    """A list is what granian writes in one call; the response is closed (request_finished
    sent) by the application, as the server would after iterating it."""
    finished: list[Any] = []

    def seen(**kwargs: Any) -> None:
        finished.append(kwargs)

    request_finished.connect(seen, dispatch_uid="seen")
    try:
        environ = {
            "REQUEST_METHOD": "GET", "PATH_INFO": "/healthz", "QUERY_STRING": "",
            "SERVER_NAME": "testserver", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr,
        }  # fmt: skip
        status: list[str] = []
        body = application(environ, lambda s, h, *_: status.append(s))
        assert isinstance(body, list) and len(body) == 1 and json.loads(body[0])
        assert status[0].startswith("200") and len(finished) == 1
        # A receiver that fails as the response closes: the answer stands, the error is
        # logged (it was a bare 500 with no X-Request-Id; a review).
        request_finished.connect(broken, dispatch_uid="broken")
        body = application(environ, lambda s, h, *_: status.append(s))
        assert status[1].startswith("200") and json.loads(body[0]) and len(finished) == 2
    finally:
        request_finished.disconnect(dispatch_uid="seen")
        request_finished.disconnect(dispatch_uid="broken")


def broken(**_: Any) -> None:
    raise RuntimeError("a receiver that fails")


def test_a_chunked_body_is_read(tenant):
    status, body = call(make_key(tenant), KEY, HTTP_TRANSFER_ENCODING="chunked")
    assert status == 201, body
    assert body["name"] == "from a stream" and body["scopes"] == ["inference"]


def test_a_chunked_body_over_the_limit_is_413(tenant, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    settings.DATASET_MAX_BYTES = 1000
    huge = json.dumps({"name": "x" * 3_000_000, "scopes": ["inference"]}).encode()
    status, body = call(make_key(tenant), huge, HTTP_TRANSFER_ENCODING="chunked")
    assert status == 413 and body["error"]["type"] == "too_large"
    assert not ApiKey.objects.for_tenant(tenant).filter(name__startswith="xxx").exists()


def test_a_body_without_a_length_over_http2_is_read_too(tenant):
    # HTTP/2 frames a body without Transfer-Encoding; a content-length is optional there.
    status, body = call(make_key(tenant), KEY)
    assert status == 201 and body["name"] == "from a stream", body


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "GZIP"])
def test_a_compressed_body_is_refused_not_inflated_before_the_key_is_checked(tenant, coding):
    """A 21 kB gzip body inflates to 22 MB: not something to do for anyone who asks."""
    secret = make_key(tenant)
    packed = gzip.compress(KEY) if coding.lower() == "gzip" else zlib.compress(KEY)
    status, body = call(
        secret, packed, HTTP_CONTENT_ENCODING=coding, CONTENT_LENGTH=str(len(packed))
    )
    assert status == 415 and body["error"]["code"] == "unsupported_content_encoding", body
    assert coding in body["error"]["message"]
    status, body = call(secret, KEY, HTTP_CONTENT_ENCODING="identity")
    assert status == 201, body
    assert ApiKey.objects.for_tenant(tenant).filter(name="from a stream").count() == 1


def test_json_is_read_as_utf8_whatever_charset_the_header_names(tenant, client_for):
    api = client_for(tenant, ["admin"])
    body = json.dumps({"name": "héllo", "scopes": ["inference"]}, ensure_ascii=False)
    created = api.post(
        "/v1/api-keys", body.encode(), content_type="application/json; charset=latin-1"
    )
    assert created.status_code == 201 and created.json()["name"] == "héllo"
    latin = api.post(
        "/v1/api-keys", body.encode("latin-1"), content_type="application/json; charset=latin-1"
    )
    assert latin.status_code == 400
    assert latin.json()["error"]["message"].endswith(
        "the body is not UTF-8 (byte 0xe9 at offset 11)."
    )


def test_a_byte_order_mark_before_the_json_is_ignored(tenant, client_for):
    api = client_for(tenant, ["admin"])
    response = api.post("/v1/api-keys", b"\xef\xbb\xbf" + KEY, content_type="application/json")
    assert response.status_code == 201 and response.json()["name"] == "from a stream"


def test_parse_errors_say_what_is_wrong_in_the_clients_terms(tenant, client_for):
    api = client_for(tenant, ["admin"])
    huge = b'{"name": "a", "scopes": ["inference"], "expires_at": ' + b"9" * 5001 + b"}"
    response = api.post("/v1/api-keys", huge, content_type="application/json")
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert message.endswith("a number has over 4,300 digits.") and "sys." not in message


def test_format_is_an_unknown_parameter_like_any_other(tenant, client_for):
    api = client_for(tenant, ["admin"])
    for query in ("format=api", "format=csv", "format=json"):
        response = api.get(f"/v1/api-keys?{query}")
        assert response.status_code == 400, query
        assert response.json()["error"]["code"] == "unknown_parameter"
        assert response.json()["error"]["param"] == "format"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/classify", b'{"model": "minilm-l6", "inputs": ["hi"], "labels": ["a", "b"], '
                         b'"\\ud800": 1}'),
        ("/v1/api-keys", b'{"name": "x", "scopes": ["inference"], "\\ud800": 1}'),
        ("/v1/api-keys", b'{"name": "x", "scopes": ["\\ud800"]}'),
        ("/v1/api-keys", b'{"name": "x", "scopes": ["inference"], "mode": "\\ud800"}'),
        ("/v1/api-keys", b'{"\\ud800": 1, "\\ud800": 2}'),
        ("/v1/fine-tunes", b'{"base_model": "minilm-l6", "training_dataset": "ds_x", '
                           b'"hyperparameters": {"\\ud800": 1}}'),
        ("/v1/fine-tunes", b'{"base_model": "minilm-l6", "training_dataset": "ds_x", '
                           b'"method": "\\ud800"}'),
        ("/v1/subscription", b'{"\\ud800": 1}'),
    ],
)  # fmt: skip
def test_a_lone_surrogate_echoed_in_an_error_is_a_400_not_a_500(tenant, client_for, path, body):
    """An unknown member's name, or a value that is not a choice, is named in the error: a
    lone surrogate there (which JSON can write and no UTF-8 can carry) made the response
    fail to encode."""
    response = client_for(tenant, ["admin"]).post(path, body, content_type="application/json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert "\\ud800" in (error["param"] or "") + error["message"]


def test_an_error_echoes_at_most_a_thousand_characters_of_what_was_sent(api):
    """A 5,000-character id in the path came back whole in the 404's message (an audit);
    an unknown member's name of a megabyte would have too."""
    response = api.get(f"/v1/api-keys/key_{'x' * 5000}")
    message = response.json()["error"]["message"]
    assert response.status_code == 404 and len(message) == 1000
    assert "key_xxx" in message and message.endswith("\u2026")
    response = api.post("/v1/api-keys", {"name": "n", "scopes": ["admin"], "y" * 10**6: 1},
                        format="json")  # fmt: skip
    assert response.status_code == 400 and len(response.content) < 2200
