"""Writing datasets: validate an upload, store its bytes, record what was found."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import Q, Sum
from django.utils import timezone

from core.artifacts import artifact_store, blob_release
from core.errors import Conflict, TooLarge
from finetuning.models import FineTuneJob
from tenants.models import Tenant

from . import messages
from .models import Dataset
from .selectors import dataset_get, dataset_jobs_unfinished
from .validation import dataset_validate

logger = logging.getLogger(__name__)


def dataset_create(*, tenant: Tenant, upload: UploadedFile) -> Dataset:
    """Store and validate ``upload``. An invalid file is stored too (status ``invalid``, with
    its errors), so the customer can see what to fix; it cannot be trained on."""
    limit = settings.DATASET_MAX_BYTES
    size = upload.size or 0
    if size > limit:
        raise TooLarge(
            messages.FILE_TOO_LARGE.format(size=size, limit=limit),
            code="file_too_large",
            param="file",
        )
    if (early := _storage_refusal(tenant, size)) is not None:  # before reading it at all
        raise early
    data = upload.read()
    filename = (upload.name or "").replace("\x00", "")[:255]
    result = dataset_validate(data, filename=filename)
    store = artifact_store()
    # Blobs are written before the row: a crash between the two leaves an unreferenced blob
    # (harmless, content-addressed), never a row pointing at nothing.
    raw_file = store.put(data)
    content_file = store.put(result.content()) if result.valid else ""
    with transaction.atomic():
        # WARNING: the storage check and the insert it admits must be atomic, or parallel
        # uploads all pass the check (finding: 9 admitted where 1 fit). The tenant's row is
        # locked as fine_tune_create locks it (FOR NO KEY UPDATE; SQLite's IMMEDIATE
        # transactions serialise writers anyway), and only around the insert: the upload
        # was read, validated and stored before, outside any transaction.
        list(Tenant.objects.select_for_update(no_key=True).filter(pk=tenant.pk).values("pk"))
        refusal = _storage_refusal(tenant, len(data))
        dataset = Dataset.objects.create(
            tenant=tenant,
            filename=filename,
            format=result.format,
            bytes=len(data),
            status=Dataset.Status.VALID if result.valid else Dataset.Status.INVALID,
            rows=result.rows,
            labels=result.labels,
            errors=result.errors,
            error_count=result.error_count,
            warnings=result.warnings,
            raw_file=raw_file,
            content_file=content_file,
            # Refused: recorded deleted, so that the files it stored leave the store the way
            # a deleted dataset's do (a blob just stored cannot be removed at once: another
            # upload of the same bytes may be about to refer to it).
            deleted_at=timezone.now() if refusal else None,
        )
    if refusal is not None:
        try:
            dataset_files_sweep(dataset_ids=[dataset.pk])
        except Exception:  # the beat's sweep tries again: the answer is the 409 regardless
            logger.exception("could not sweep the files of refused upload %s", dataset.pk)
        raise refusal
    return dataset


def _storage_refusal(tenant: Tenant, size: int) -> Conflict | None:
    """The 409 for an upload that would take the tenant's datasets (invalid ones too: they
    are stored) past DATASET_STORAGE_BYTES: the artifact store is every tenant's, and one
    tenant's uploads must not fill it. Deleting a dataset makes room."""
    limit = settings.DATASET_STORAGE_BYTES
    stored = Dataset.objects.for_tenant(tenant).filter(deleted_at__isnull=True)
    used = int(stored.aggregate(total=Sum("bytes"))["total"] or 0)
    if used + size <= limit:
        return None
    return Conflict(
        messages.STORAGE_FULL.format(used=used, size=size, limit=limit),
        code="storage_limit_reached",
        param="file",
    )


def _blobs_release(digests: list[str]) -> bool:
    """A deleted dataset's files, once no dataset (of any tenant: blobs are content-addressed
    and shared) and no unfinished job refers to them, and none was stored again within
    ``BLOB_GRACE_S``. A job that has finished does not need its file again. True when none is
    left to this dataset: removed, gone already, or kept by a dataset that refers to it (its
    own delete releases it). False while an unfinished job or the grace period keeps one:
    ``dataset_files_sweep`` tries again."""
    # NOTE: unscoped on purpose: whether anyone at all still refers to these bytes.
    datasets = Dataset.objects.unscoped().filter(deleted_at__isnull=True)
    jobs = FineTuneJob.objects.unscoped().exclude(status__in=FineTuneJob.TERMINAL)
    done = True
    for digest in dict.fromkeys(d for d in digests if d):
        if datasets.filter(Q(raw_file=digest) | Q(content_file=digest)).exists():
            continue
        if jobs.filter(Q(training_file=digest) | Q(validation_file=digest)).exists():
            done = False
            continue
        if not blob_release(digest):
            done = False  # stored again within the grace period
    return done


def dataset_files_sweep(dataset_ids: list[str] | None = None) -> int:
    """The files of deleted datasets that their delete could not release (a job still
    training on them, or stored again within the grace period: a dataset deleted minutes
    after its upload kept its files for good, and upload-and-delete filled the store past
    every tenant's limit). Run after each delete (for ``dataset_ids``) and by the platform
    worker's beat; returns how many datasets' files were released."""
    pending = Dataset.objects.unscoped().filter(
        deleted_at__isnull=False, files_released_at__isnull=True
    )
    if dataset_ids is not None:
        pending = pending.filter(pk__in=dataset_ids)
    released = 0
    rows = pending.values_list("pk", "tenant_id", "raw_file", "content_file")
    for dataset_id, tenant_id, raw_file, content_file in rows.iterator():
        if _blobs_release([raw_file, content_file]):
            try:
                _embeddings_release(tenant_id, content_file)
            except (OSError, ValueError):  # one bad cache must not stop the sweep
                logger.exception("could not release the embeddings of dataset %s", dataset_id)
            Dataset.objects.unscoped().filter(pk=dataset_id).update(
                files_released_at=timezone.now()
            )
            released += 1
    return released


def _embeddings_release(tenant_id: str, digest: str) -> None:
    """The embeddings the tenant's jobs derived from a deleted dataset's file (the cache
    that lets a second job on the same file skip embedding it), unless another of its
    datasets holds the same bytes: derived data leaves with the data."""
    if not digest:
        return
    live = Dataset.objects.unscoped().filter(tenant_id=tenant_id, deleted_at__isnull=True)
    if live.filter(content_file=digest).exists():
        return  # that dataset's own delete releases them
    artifact_store().embeddings_release(tenant_id, digest)


@transaction.atomic
def dataset_delete(*, tenant: Tenant, dataset_id: str, livemode: bool = True) -> Dataset:
    """Soft delete: the row disappears from the API, and its files leave the artifact store
    once nothing refers to them (``_blobs_release``); finished jobs keep the file's hash.

    A dataset that a job still validating, queued or running trains or validates on is not
    deleted (409 ``dataset_in_use``): the job would go on training on "deleted" data.
    NOTE: the row is locked first. On PostgreSQL a job being created on it holds a key-share
    lock on it from its INSERT until its commit, so the count below sees that job."""
    dataset = dataset_get(tenant=tenant, dataset_id=dataset_id, param="id", for_update=True)
    jobs = dataset_jobs_unfinished(tenant=tenant, dataset=dataset)
    if jobs:
        # Datasets are both modes'; jobs are one mode's. The caller is told the ids it can
        # see and cancel, and only how many the other mode has (404s to this key).
        seen = [job_id for job_id, job_live in jobs if job_live == livemode]
        other = len(jobs) - len(seen)
        named = ", ".join(seen) if seen else ""
        if other:
            mode = "test" if livemode else "live"
            more = messages.DATASET_IN_USE_OTHER_MODE.format(count=other, mode=mode)
            named = f"{named} and {more}" if named else more
        raise Conflict(
            messages.DATASET_IN_USE.format(id=dataset.pk, jobs=named),
            code="dataset_in_use",
            param="id",
        )
    dataset.deleted_at = timezone.now()
    dataset.save(update_fields=["deleted_at"])
    # robust: the delete has committed, and a failure here (a locked database, the store)
    # must not answer it with an error; the beat's sweep tries again.
    transaction.on_commit(lambda: dataset_files_sweep(dataset_ids=[dataset.pk]), robust=True)
    return dataset
