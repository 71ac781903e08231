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
from tests.factories import TenantFactory, bearer, make_key
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


def test_parallel_uploads_stop_at_the_storage_limit_too(transactional_db, monkeypatch, settings):
    """Two uploads at once where one fits: one 201, one 409 (both passed the check before,
    and 4-9 of 16 went in past the limit). The refused one's files go out like a deleted
    dataset's: it is recorded deleted, never listed."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection

    tenant = TenantFactory()
    secret = make_key(tenant, ["admin"])
    settings.DATASET_STORAGE_BYTES = len(good_file()) + 10  # one of the two
    # Hold each upload, once past the early check, until the other is past it too.
    both_checked = threading.Barrier(2, timeout=5)
    validate = services.dataset_validate

    def validate_then_wait(*args, **kwargs):
        both_checked.wait()
        return validate(*args, **kwargs)

    monkeypatch.setattr(services, "dataset_validate", validate_then_wait)

    def upload(n):
        try:
            return _upload(bearer(secret), good_file()).status_code
        finally:
            connection.close()

    with ThreadPoolExecutor(2) as pool:
        assert sorted(pool.map(upload, range(2))) == [201, 409]
    listed = bearer(secret).get("/v1/datasets").json()["data"]
    assert len(listed) == 1
    rows = Dataset.objects.for_tenant(tenant)
    assert rows.filter(deleted_at__isnull=True).count() == 1
    assert rows.filter(deleted_at__isnull=False).count() == 1  # the refused one, swept later


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


def test_a_dataset_deleted_minutes_after_its_upload_leaves_the_store_at_the_next_sweep(
    api, tenant, django_capture_on_commit_callbacks
):
    """The delete keeps files stored within the grace period; the beat's sweep releases them
    once it has passed (they stayed for good: upload-and-delete filled the store)."""
    store = ArtifactStore(settings.ARTIFACT_DIR)
    made = _upload(api, good_file()).json()
    row = Dataset.objects.for_tenant(tenant).get(pk=made["id"])
    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(f"/v1/datasets/{made['id']}").status_code == 200
    assert store.exists(row.raw_file) and store.exists(row.content_file)  # minutes old
    assert services.dataset_files_sweep() == 0  # still within the grace period
    for digest in (row.raw_file, row.content_file):
        _age(store, digest, 3600)
    assert services.dataset_files_sweep() == 1
    assert not store.exists(row.raw_file) and not store.exists(row.content_file)
    row.refresh_from_db()
    assert row.files_released_at is not None
    assert services.dataset_files_sweep() == 0  # nothing left to look at


def test_a_deleted_datasets_cached_embeddings_leave_with_it(api, tenant, client_for):
    """A job caches the embeddings of its dataset's file (per tenant and encoder) so that
    the next job on it skips embedding. They are derived from the customer's data: they
    leave the store when the tenant's last dataset with those bytes is deleted, and no
    other tenant's cache goes with them. (They stayed for good.)"""
    from workers.runtime.encoder import load_encoder
    from workers.training.head import embeddings_get

    store = ArtifactStore(settings.ARTIFACT_DIR)
    encoder = load_encoder("minilm-l6", device="cpu")
    first, second = (_upload(api, good_file()).json() for _ in range(2))  # the same bytes
    digest = Dataset.objects.for_tenant(tenant).get(pk=first["id"]).content_file
    other = TenantFactory()
    assert _upload(client_for(other, ["admin"]), good_file()).status_code == 201

    def cache(owner: str, texts: list[str], more: str = "") -> tuple[str, bool]:
        _, _, cached = embeddings_get(store=store, encoder=encoder, owner=owner, source=digest,
                                      more=more, texts=texts, step=lambda: None)  # fmt: skip
        ref = f"embeddings/minilm-l6/{owner}/{digest}" + (f".{more}" if more else "")
        return store.ref_get(ref) or "", cached

    mine, _ = cache(tenant.pk, ["a late parcel", "a broken lid"])
    mine_split, _ = cache(tenant.pk, ["a broken lid"], more="validation")
    theirs, _ = cache(other.pk, ["a late parcel", "a broken lid"])  # the same rows
    assert theirs != mine  # bytes of its own: one's release never empties the other's
    assert cache(tenant.pk, ["a late parcel", "a broken lid"]) == (mine, True)  # reused

    for made in (first, second):
        row = Dataset.objects.for_tenant(tenant).get(pk=made["id"])
        for blob in (row.raw_file, row.content_file):
            _age(store, blob, 3600)
        assert api.delete(f"/v1/datasets/{made['id']}").status_code == 200
        assert services.dataset_files_sweep() == 1
        if made is first:  # the second dataset holds the same bytes: kept for it
            assert store.exists(mine) and store.exists(mine_split)
    assert not store.exists(mine) and not store.exists(mine_split)
    assert cache(tenant.pk, ["a late parcel", "a broken lid"])[1] is False  # embedded again
    assert store.exists(theirs) and store.exists(digest)  # the other tenant's, untouched
    assert cache(other.pk, ["a late parcel", "a broken lid"]) == (theirs, True)  # still reused


def test_files_an_unfinished_job_trains_on_are_released_once_it_has_finished(api, tenant):
    """The API refuses to delete a dataset under an unfinished job (409); a row deleted
    beside one anyway (by hand, or a race on a database without row locks) keeps the
    job's file until the job has finished."""
    from django.utils import timezone

    from finetuning.models import FineTuneJob

    store = ArtifactStore(settings.ARTIFACT_DIR)
    made = _upload(api, good_file()).json()
    row = Dataset.objects.for_tenant(tenant).get(pk=made["id"])
    job = FineTuneJob.objects.create(
        tenant=tenant, base_model="minilm-l6", training_dataset=row,
        training_file=row.content_file, status=FineTuneJob.Status.RUNNING, method="head",
    )  # fmt: skip
    Dataset.objects.for_tenant(tenant).filter(pk=row.pk).update(deleted_at=timezone.now())
    for digest in (row.raw_file, row.content_file):
        _age(store, digest, 3600)
    assert services.dataset_files_sweep() == 0
    assert store.exists(row.content_file)  # the job still reads it
    job.status = FineTuneJob.Status.SUCCEEDED
    job.save(update_fields=["status"])
    assert services.dataset_files_sweep() == 1
    assert not store.exists(row.content_file)


def test_the_sweep_is_on_the_platform_workers_schedule():
    from config.celery import app

    app.loader.import_default_modules()
    scheduled = {entry["task"] for entry in app.conf.beat_schedule.values()}
    assert "datasets.files_sweep" in scheduled and "datasets.files_sweep" in app.tasks
    assert all(task in app.tasks for task in scheduled)
