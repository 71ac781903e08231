"""The artifact store as the control plane reaches it (datasets, model files), shared with
the workers (``workers/artifacts.py``: content-addressed, so one blob may be many objects')."""

from __future__ import annotations

from django.conf import settings

from workers.artifacts import ArtifactMissingError, ArtifactStore

# A file stored (or stored again) this recently is never released: an upload of the same
# bytes, or a training run that made the same model file, may be about to refer to it.
BLOB_GRACE_S = 600.0


def artifact_store() -> ArtifactStore:
    return ArtifactStore(settings.ARTIFACT_DIR)


def blob_release(digest: str) -> bool:
    """Remove a blob its caller found nothing refers to any more, unless it was stored again
    within ``BLOB_GRACE_S``. True unless it is still there for that reason (try again
    later)."""
    store = artifact_store()
    try:
        return store.release(digest, unless_newer_than_s=BLOB_GRACE_S) or not store.exists(digest)
    except ArtifactMissingError:  # not a blob's name (a row edited by hand): nothing to remove
        return True
