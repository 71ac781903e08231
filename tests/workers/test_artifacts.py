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


def test_embeddings_release_takes_one_owners_refs_of_one_file_and_nothing_else(
    tmp_path: Path,
) -> None:
    store = ArtifactStore(tmp_path)
    source, neighbour = "a" * 64, "ab" + "c" * 62
    refs = {
        "embeddings/minilm-l6/ten_1/" + source: b"mine",
        "embeddings/minilm-l6-int8/ten_1/" + source + ".split": b"mine, int8",
        "embeddings/minilm-l6/ten_1/" + neighbour: b"another file",  # not a prefix match
        "embeddings/minilm-l6/ten_2/" + source: b"another tenant",
    }
    blobs = {name: store.put(data) for name, data in refs.items()}
    for name, digest in blobs.items():
        store.ref_set(name, digest)
    assert store.embeddings_release("ten_1", source) == 2
    assert [name for name in refs if store.ref_get(name)] == list(refs)[2:]
    assert not store.exists(blobs["embeddings/minilm-l6/ten_1/" + source])
    assert store.embeddings_release("ten_1", source) == 0
    for owner, file in (("../ten_2", source), ("..", source), ("ten_1", "../" + source)):
        with pytest.raises(ValueError):
            store.embeddings_release(owner, file)
