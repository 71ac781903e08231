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
