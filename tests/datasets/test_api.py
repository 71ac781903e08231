"""/v1/datasets over the API: upload (multipart), list, retrieve, delete; errors in the
contract's shape, never a 500; scope and tenant isolation."""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from datasets.models import Dataset
from finetuning.events import fine_tune_event_apply
from finetuning.models import FineTuneJob
from tests.factories import subscribe
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
    assert "names no boundary" in error["message"] and "None" not in error["message"]


def test_a_multipart_body_cut_off_before_its_closing_boundary_says_so(api):
    head = b'--xx\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'
    body = head + b'{"text": "a", "label": "b"}\n'
    for cut in (body, body + b"\r\n--xx\r\n"):  # (no closing '--xx--' either way)
        response = api.post("/v1/datasets", cut, content_type="multipart/form-data; boundary=xx")
        assert_error(response, 400, "invalid_multipart")
        assert "closing boundary" in response.json()["error"]["message"]
    whole = api.post(
        "/v1/datasets", body + b"\r\n--xx--\r\n", content_type="multipart/form-data; boundary=xx"
    )
    assert whole.status_code == 201, whole.content  # (one row: a dataset, invalid)


def test_a_file_name_too_long_for_the_parser_is_said_as_such(api):
    """Django's parser takes at most 1,024 bytes of a part's headers: a longer file name was
    "not valid multipart/form-data: ... Request max total header size exceeded"."""
    name = "x" * 1_000 + ".jsonl"  # (by hand: the test client cuts a file name to 255)
    head = f'--xx\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n\r\n'
    body = head.encode() + b'{"text": "a", "label": "b"}\n\r\n--xx--\r\n'
    response = api.post("/v1/datasets", body, content_type="multipart/form-data; boundary=xx")
    assert_error(response, 400, "invalid_multipart")
    error = response.json()["error"]
    assert error["param"] == "file" and "shorter name" in error["message"]
    assert upload(api, b'{"text": "a", "label": "b"}\n', name="x" * 200).status_code == 201


@pytest.mark.parametrize("part", ["field", "file"])
def test_a_multipart_body_with_more_parts_than_an_upload_takes_says_so(api, part, caplog):
    """Django's refusal (TooManyFieldsSent / TooManyFilesSent) was a bare "could not be
    understood", and an ERROR traceback in the log for every such request."""
    head = b'--xx\r\nContent-Disposition: form-data; name="f%d"'
    extra = b'; filename="f.txt"' if part == "file" else b""
    parts = b"".join(head % n + extra + b"\r\n\r\nx\r\n" for n in range(1_100))
    response = api.post(
        "/v1/datasets", parts + b"--xx--\r\n", content_type="multipart/form-data; boundary=xx"
    )
    assert_error(response, 400, "invalid_multipart")
    assert "more parts than an upload takes" in response.json()["error"]["message"]
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_a_file_part_whose_filename_is_not_utf8_says_so(api):
    body = (
        b'--xx\r\nContent-Disposition: form-data; name="file"; filename="\xff\xfe.jsonl"'
        b'\r\n\r\n{"text": "a", "label": "b"}\n\r\n--xx--\r\n'
    )
    response = api.post("/v1/datasets", body, content_type="multipart/form-data; boundary=xx")
    assert_error(response, 400, "invalid_parameter", param="file")
    assert "could not be read" in response.json()["error"]["message"]


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
    # By label, read back too (PostgreSQL's jsonb kept them by length: "bug" first).
    assert list(api.get(f"/v1/datasets/{body['id']}").json()["labels"]) == ["billing", "bug"]
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
    # curl -F file=<x.jsonl: the field sent as text (no filename); "send the field 'file'" was
    # what it heard (an outside audit).
    as_text = api.post("/v1/datasets", {"file": good_file().decode()}, format="multipart")
    assert_error(as_text, 400, "invalid_parameter", "file")
    assert "sent as text, not as a file" in as_text.json()["error"]["message"]
    assert_error(
        api.post("/v1/datasets", {"text": "x"}, format="json"), 415, "unsupported_media_type"
    )
    assert_error(upload(api, good_file(), purpose="fine-tune"), 400, "unknown_parameter", "purpose")
    settings.DATASET_MAX_BYTES = 100
    assert_error(upload(api, good_file()), 413, "file_too_large", "file")


def _stored(artifact_dir):
    return {path for path in artifact_dir.rglob("*") if path.is_file()}


def test_a_form_field_given_twice_is_refused_and_nothing_is_stored(api, tenant, artifact_dir):
    """Django keeps the last of two ``file`` parts: the upload would silently be the second
    file. Refused, as a JSON member or query parameter given twice is."""
    before = _stored(artifact_dir)
    first, second = good_file(), good_file(11)
    cases = [
        ([SimpleUploadedFile("a.jsonl", first), SimpleUploadedFile("b.jsonl", second)], {}),
        # A file part and a plain field under one name are two values of one field too.
        ([SimpleUploadedFile("a.jsonl", first), "text"], {}),
        (SimpleUploadedFile("a.jsonl", first), {"purpose": ["a", "b"]}),
    ]
    for files, fields in cases:
        response = api.post("/v1/datasets", {"file": files, **fields}, format="multipart")
        param = next(iter(fields), "file")
        assert_error(response, 400, "duplicate_parameter", param)
        error = response.json()["error"]
        assert error["type"] == "invalid_request" and param in error["message"]
    assert not Dataset.objects.for_tenant(tenant).exists()
    assert _stored(artifact_dir) == before
    # One file is still an upload.
    assert upload(api, first).status_code == 201


def test_a_file_given_twice_is_refused_before_its_idempotency_key_is_recorded(api, tenant):
    # The fingerprint reads one value per field: the last file, which is the one sent next.
    files = [
        SimpleUploadedFile("a.jsonl", good_file()),
        SimpleUploadedFile("b.jsonl", good_file(11)),
    ]
    twice = api.post(
        "/v1/datasets", {"file": files}, format="multipart", HTTP_IDEMPOTENCY_KEY="upload-2"
    )
    assert_error(twice, 400, "duplicate_parameter", "file")
    assert not Dataset.objects.for_tenant(tenant).exists()
    # The key was not spent on the refused request: the corrected upload is a first request,
    # not a replay of the 400.
    once = api.post(
        "/v1/datasets",
        {"file": SimpleUploadedFile("b.jsonl", good_file(11))},
        format="multipart",
        HTTP_IDEMPOTENCY_KEY="upload-2",
    )
    assert once.status_code == 201, once.content
    assert "Idempotent-Replayed" not in once.headers and once.json()["rows"] == 22


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


def test_half_a_surrogate_pair_is_an_error_on_its_line_not_a_500(api):
    """JSON can spell "\\ud800" (half of a character); no database or tokenizer takes it."""
    rows = [f'{{"text": "t{i}", "label": "{"ab"[i % 2]}"}}' for i in range(30)]
    rows[3] = '{"text": "broken \\ud800 text", "label": "a"}'
    rows[7] = '{"text": "fine", "label": "b\\udfff"}'
    response = upload(api, ("\n".join(rows) + "\n").encode())
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "invalid"
    assert [e["line"] for e in body["errors"]] == [4, 8]
    assert "half of a character" in body["errors"][0]["message"]


# -- a dataset that fine-tuning still reads ------------------------------------------------


def _job_event(job_id, seq, kind, **data):
    """What the training worker sends as a job moves on (applied as the consumer applies it)."""
    return {
        "v": 1, "job_id": job_id, "attempt": 1, "seq": seq, "type": kind, "level": "info",
        "message": kind, "data": data, "occurred_at": timezone.now().isoformat(),
        "worker": "test",
    }  # fmt: skip


def _fine_tune(api, training, validation=None):
    body = {"base_model": "minilm-l6", "training_dataset": training["id"]}
    if validation is not None:
        body["validation_dataset"] = validation["id"]
    response = api.post("/v1/fine-tunes", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()["id"]


def _move_job(api, tenant, job_id, status):
    """Bring a queued job to ``status`` the way it gets there."""
    if status == "validating_files":  # only ever seen inside the job's creation
        FineTuneJob.objects.for_tenant(tenant).filter(pk=job_id).update(status=status)
    elif status == "cancelled":
        assert api.post(f"/v1/fine-tunes/{job_id}/cancel").status_code == 200
    elif status != "queued":
        assert fine_tune_event_apply(event=_job_event(job_id, 1, "started"))
        if status == "succeeded":
            result = {"artifact": "a" * 64, "labels": ["billing", "bug"], "trained_tokens": 100}
            metrics = {"accuracy": 0.9, "macro_f1": 0.88}
            event = _job_event(job_id, 2, "succeeded", metrics=metrics, **result)
            assert fine_tune_event_apply(event=event)
        elif status == "failed":
            fine_tune_event_apply(event=_job_event(job_id, 2, "failed", code="training_failed"))
    assert FineTuneJob.objects.for_tenant(tenant).get(pk=job_id).status == status


@pytest.mark.parametrize("status", ["validating_files", "queued", "running"])
def test_a_dataset_an_unfinished_job_uses_cannot_be_deleted(api, tenant, status):
    subscribe(tenant, "pro")
    training, validation = upload(api, good_file()).json(), upload(api, good_file(11)).json()
    first = _fine_tune(api, training, validation)
    second = _fine_tune(api, training)
    _move_job(api, tenant, first, status)
    for dataset, jobs in ((training, [first, second]), (validation, [first])):
        response = api.delete(f"/v1/datasets/{dataset['id']}")
        assert_error(response, 409, "dataset_in_use", "id")
        error = response.json()["error"]
        assert error["type"] == "conflict"
        assert all(job in error["message"] for job in jobs) and "cancel" in error["message"]
        assert (second in error["message"]) is (second in jobs)
        assert api.get(f"/v1/datasets/{dataset['id']}").status_code == 200  # still there


def test_a_dataset_in_use_names_only_the_jobs_the_deleting_key_can_see(api, tenant, client_for):
    """Datasets are both modes'; a test-mode job on one was named to a live key, which got a
    404 for it when it tried to cancel it as told."""
    subscribe(tenant, "pro")
    dataset = upload(api, good_file()).json()
    live_job = _fine_tune(api, dataset)
    test_api = client_for(tenant, ["admin"], mode="test")
    test_job = _fine_tune(test_api, dataset)

    refused = api.delete(f"/v1/datasets/{dataset['id']}")
    assert_error(refused, 409, "dataset_in_use", "id")
    message = refused.json()["error"]["message"]
    assert live_job in message and test_job not in message and "1 job(s) of test mode" in message
    from_test = test_api.delete(f"/v1/datasets/{dataset['id']}").json()["error"]["message"]
    assert test_job in from_test and live_job not in from_test and "of live mode" in from_test

    assert api.post(f"/v1/fine-tunes/{live_job}/cancel").status_code == 200
    only_test = api.delete(f"/v1/datasets/{dataset['id']}").json()["error"]["message"]
    assert test_job not in only_test and "1 job(s) of test mode" in only_test
    assert test_api.post(f"/v1/fine-tunes/{test_job}/cancel").status_code == 200
    assert api.delete(f"/v1/datasets/{dataset['id']}").status_code == 200


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_a_dataset_can_be_deleted_once_its_jobs_are_finished(api, tenant, status):
    subscribe(tenant, "pro")
    training, validation = upload(api, good_file()).json(), upload(api, good_file(11)).json()
    job = _fine_tune(api, training, validation)
    other = upload(api, good_file(12)).json()
    _fine_tune(api, other)  # a job on another dataset is no reason to refuse
    _move_job(api, tenant, job, status)
    for dataset in (training, validation):
        deleted = api.delete(f"/v1/datasets/{dataset['id']}")
        assert deleted.status_code == 200, deleted.content
        assert deleted.json() == {"id": dataset["id"], "object": "dataset", "deleted": True}
        assert_error(api.get(f"/v1/datasets/{dataset['id']}"), 404, "dataset_not_found")
    # The finished job still reads as it did.
    assert api.get(f"/v1/fine-tunes/{job}").json()["training_dataset"] == training["id"]


def test_the_next_page_follows_a_cursor_that_was_deleted(api):
    """List a page, delete what it held, ask for the page after it: the cleanup loop."""
    ids = [upload(api, good_file(), name=f"f{n}.jsonl").json()["id"] for n in range(5)]
    first = api.get("/v1/datasets", {"limit": 2}).json()
    assert [d["id"] for d in first["data"]] == ids[::-1][:2] and first["has_more"]
    for dataset in first["data"]:
        assert api.delete(f"/v1/datasets/{dataset['id']}").status_code == 200
    after = api.get("/v1/datasets", {"limit": 2, "starting_after": ids[-2]}).json()
    assert [d["id"] for d in after["data"]] == ids[::-1][2:4] and after["has_more"]
    # An id that never was is still a 404.
    missing = api.get("/v1/datasets", {"starting_after": "ds_nope"})
    assert_error(missing, 404, "resource_missing", "starting_after")
