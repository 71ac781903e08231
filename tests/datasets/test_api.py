"""/v1/datasets over the API: upload (multipart), list, retrieve, delete; errors in the
contract's shape, never a 500; scope and tenant isolation."""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from datasets.models import Dataset
from workers.artifacts import ArtifactStore

pytestmark = pytest.mark.django_db


def upload(client, data: bytes, name="train.jsonl", **extra):
    return client.post(
        "/v1/datasets", {"file": SimpleUploadedFile(name, data), **extra}, format="multipart"
    )


def test_a_multipart_body_that_does_not_parse_says_so(api):
    response = api.post(
        "/v1/datasets",
        b"--x\r\n",
        content_type="multipart/form-data",  # no boundary
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_multipart" and "JSON" not in error["message"]


def good_file(per_label=10):
    rows = [
        {"text": f"ticket {label} number {i}", "label": label}
        for label in ("billing", "bug")
        for i in range(per_label)
    ]
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def assert_error(response, status, code, param=None):
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"type", "code", "message", "param"}
    assert error["code"] == code
    if param is not None:
        assert error["param"] == param


def test_upload_a_valid_file(api, artifact_dir):
    response = upload(api, good_file())
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["id"].startswith("ds_") and body["object"] == "dataset"
    assert body["status"] == "valid" and body["rows"] == 20 and body["format"] == "jsonl"
    assert body["labels"] == {"billing": 10, "bug": 10}
    assert body["errors"] == [] and body["error_count"] == 0
    dataset = Dataset.objects.unscoped().get(pk=body["id"])
    store = ArtifactStore(artifact_dir)
    assert store.get(dataset.raw_file) == good_file()
    assert len(store.get(dataset.content_file).splitlines()) == 20


def test_upload_an_invalid_file_is_stored_with_its_errors(api):
    data = good_file() + b"not json\n" + json.dumps({"text": "", "label": "bug"}).encode() + b"\n"
    body = upload(api, data).json()
    assert body["status"] == "invalid" and body["error_count"] == 2
    assert [e["line"] for e in body["errors"]] == [21, 22]
    assert api.get(f"/v1/datasets/{body['id']}").json()["status"] == "invalid"


def test_csv_upload(api):
    data = b"text,label\n" + b"".join(
        f"row {i},{'x' if i % 2 else 'y'}\n".encode() for i in range(12)
    )
    body = upload(api, data, name="train.csv").json()
    assert body["status"] == "valid" and body["format"] == "csv" and body["rows"] == 12


def test_bad_uploads_are_4xx_in_the_error_shape(api, settings):
    assert_error(api.post("/v1/datasets", {}, format="multipart"), 400, "missing_parameter", "file")
    assert_error(
        api.post("/v1/datasets", {"text": "x"}, format="json"), 415, "unsupported_media_type"
    )
    assert_error(upload(api, good_file(), purpose="fine-tune"), 400, "unknown_parameter", "purpose")
    settings.DATASET_MAX_BYTES = 100
    assert_error(upload(api, good_file()), 413, "file_too_large", "file")


def test_list_retrieve_delete(api):
    first = upload(api, good_file()).json()
    second = upload(api, good_file(11)).json()
    listed = api.get("/v1/datasets?limit=1").json()
    assert listed["object"] == "list" and listed["has_more"] is True
    assert listed["data"][0]["id"] == second["id"]
    rest = api.get(f"/v1/datasets?limit=1&starting_after={second['id']}").json()
    assert [d["id"] for d in rest["data"]] == [first["id"]]
    deleted = api.delete(f"/v1/datasets/{first['id']}")
    assert deleted.json() == {"id": first["id"], "object": "dataset", "deleted": True}
    assert_error(api.get(f"/v1/datasets/{first['id']}"), 404, "dataset_not_found")
    assert_error(api.delete(f"/v1/datasets/{first['id']}"), 404, "dataset_not_found")


def test_scope_and_isolation(tenant, other_tenant, client_for):
    mine = upload(client_for(tenant, ["training"]), good_file()).json()
    assert_error(upload(client_for(tenant, ["inference"]), good_file()), 403, "insufficient_scope")
    other = client_for(other_tenant, ["admin"])
    assert_error(other.get(f"/v1/datasets/{mine['id']}"), 404, "dataset_not_found")
    assert_error(other.delete(f"/v1/datasets/{mine['id']}"), 404, "dataset_not_found")
    assert other.get("/v1/datasets").json()["data"] == []


def test_idempotent_upload_stores_one_dataset(api, tenant):
    first = api.post(
        "/v1/datasets",
        {"file": SimpleUploadedFile("t.jsonl", good_file())},
        format="multipart",
        HTTP_IDEMPOTENCY_KEY="upload-1",
    )
    again = api.post(
        "/v1/datasets",
        {"file": SimpleUploadedFile("t.jsonl", good_file())},
        format="multipart",
        HTTP_IDEMPOTENCY_KEY="upload-1",
    )
    assert first.status_code == again.status_code == 201, again.content
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert Dataset.objects.for_tenant(tenant).count() == 1
    # Another file under the same name and key is another request: 409, not a replay.
    other = api.post(
        "/v1/datasets",
        {"file": SimpleUploadedFile("t.jsonl", good_file() + b'{"text": "x", "label": "a"}\n')},
        format="multipart",
        HTTP_IDEMPOTENCY_KEY="upload-1",
    )
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
    # So is the same file under another name: the dataset would keep the first one's name.
    renamed = api.post(
        "/v1/datasets",
        {"file": SimpleUploadedFile("renamed.jsonl", good_file())},
        format="multipart",
        HTTP_IDEMPOTENCY_KEY="upload-1",
    )
    assert renamed.status_code == 409, renamed.content


def test_nul_in_labels_and_filename_is_stored_safely(api):
    rows = [{"text": f"t{i}", "label": "a\u0000" if i == 0 else "ab"[i % 2]} for i in range(30)]
    data = "".join(json.dumps(row) + "\n" for row in rows).encode()
    response = upload(api, data, name="bad\x00name.jsonl")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "invalid" and body["errors"][0]["line"] == 1
    assert "\x00" not in json.dumps(body["labels"]) and "\x00" not in body["filename"]
