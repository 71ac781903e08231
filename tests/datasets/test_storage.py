"""The artifact store is every tenant's: a tenant's datasets have a size limit in all, and a
deleted dataset's files leave the store once nothing refers to them (they stayed forever:
uploading and deleting filled the disk)."""

from __future__ import annotations

import os
import time

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile

from datasets import services
from datasets.models import Dataset
from tests.datasets.test_api import good_file
from tests.factories import TenantFactory, make_key
from workers.artifacts import ArtifactStore

pytestmark = pytest.mark.django_db


def _upload(client, data: bytes):
    return client.post(
        "/v1/datasets", {"file": SimpleUploadedFile("d.jsonl", data)}, format="multipart"
    )


def _age(store: ArtifactStore, digest: str, seconds: float) -> None:
    path = store._blob(digest)
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_tenants_datasets_stop_at_the_storage_limit_and_a_delete_makes_room(
    api, settings, django_capture_on_commit_callbacks
):
    first = _upload(api, good_file())
    assert first.status_code == 201
    settings.DATASET_STORAGE_BYTES = len(good_file(per_label=11)) + 10  # one file, not two
    refused = _upload(api, good_file(per_label=11))
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert (error["code"], error["param"]) == ("storage_limit_reached", "file")
    assert "Delete datasets" in error["message"]
    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(f"/v1/datasets/{first.json()['id']}").status_code == 200
    assert _upload(api, good_file(per_label=11)).status_code == 201


def test_a_deleted_datasets_files_leave_the_store_once_nothing_refers_to_them(
    api, tenant, client_for, django_capture_on_commit_callbacks
):
    store = ArtifactStore(settings.ARTIFACT_DIR)
    mine = _upload(api, good_file()).json()
    row = Dataset.objects.for_tenant(tenant).get(pk=mine["id"])
    # Another tenant uploaded the very same bytes: its dataset refers to the same files.
    other = TenantFactory()
    theirs = _upload(client_for(other, ["admin"]), good_file()).json()
    for digest in (row.raw_file, row.content_file):
        _age(store, digest, 3600)
    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(f"/v1/datasets/{mine['id']}").status_code == 200
    assert store.exists(row.raw_file) and store.exists(row.content_file)  # theirs still
    other_api = client_for(other, ["admin"])
    # Stored again moments ago (an upload of the same bytes may be about to refer to it):
    # kept through the delete.
    store.put(good_file())
    with django_capture_on_commit_callbacks(execute=True):
        assert other_api.delete(f"/v1/datasets/{theirs['id']}").status_code == 200
    assert store.exists(row.raw_file)
    # Past the grace period, with nothing referring to them: gone.
    for digest in (row.raw_file, row.content_file):
        _age(store, digest, 3600)
    services._blobs_release([row.raw_file, row.content_file])
    assert not store.exists(row.raw_file) and not store.exists(row.content_file)
    make_key(tenant, ["admin"])  # the store is usable as before
    assert _upload(api, good_file()).status_code == 201
