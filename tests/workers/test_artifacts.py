"""The artifact store takes only what it could have handed out: a content hash, or a ref
name of safe characters; anything with a path separator trick or a trailing newline is
refused before it reaches the file system."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.artifacts import ArtifactMissingError, ArtifactStore


def test_a_digest_or_ref_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    digest = store.put(b"model bytes")
    assert store.get(digest) == b"model bytes"
    with pytest.raises(ArtifactMissingError, match="not an artifact hash"):
        store.get(digest + "\n")
    for name in ("embeddings/ok\n", "../escape", "a//b"):
        with pytest.raises(ValueError, match="invalid ref name"):
            store.ref_get(name)


def test_a_release_leaves_a_blob_stored_again_while_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stat, then an unlink: an upload of the same bytes that touched the blob between
    the two (and was told it was stored) lost it."""
    import os
    import time

    store = ArtifactStore(tmp_path)
    digest = store.put(b"dataset bytes")
    blob = store._blob(digest)
    old = time.time() - 3600
    os.utime(blob, (old, old))
    rename = os.rename

    def put_meanwhile(src: object, dst: object) -> None:
        store.put(b"dataset bytes")  # lands between the release's look and its move
        rename(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "rename", put_meanwhile)
    assert not store.release(digest, unless_newer_than_s=600)
    monkeypatch.setattr(os, "rename", rename)
    assert store.get(digest) == b"dataset bytes"
    assert [p.name for p in blob.parent.iterdir()] == [digest]  # nothing left aside
    os.utime(blob, (old, old))
    assert store.release(digest, unless_newer_than_s=600) and not store.exists(digest)
    assert list(blob.parent.iterdir()) == []
