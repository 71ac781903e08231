"""A content-addressed artifact store: datasets, cached embeddings, fine-tuned model files.

Blobs are named by the SHA-256 of their bytes, so a name can never point at changed content,
the same upload stored twice costs one copy, and a worker that has a blob never needs to ask
whether it is stale. Derived data (a dataset's embeddings under one encoder) is found through
*refs*: small files that map a name to a blob hash, like git refs.

The default backend is a local directory (``ARTIFACT_DIR``, default ``$DATA_DIR/artifacts``,
i.e. ``<repo>/var/artifacts``)
that API and workers share on one machine; an S3-compatible bucket would implement the same
four calls. Standard library only, so the platform imports it without torch.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
import time
from pathlib import Path

_HASH = re.compile(r"[0-9a-f]{64}")
_REF = re.compile(r"[A-Za-z0-9._:-]+(/[A-Za-z0-9._:-]+)*")


# Cached embeddings: refs/embeddings/<encoder>/<owner>/<dataset file hash>[.<more>], each
# the embeddings one tenant's jobs derived from one dataset file (``embeddings_ref``).
EMBEDDINGS = "embeddings"


def embeddings_ref(encoder_id: str, owner: str, source: str, more: str = "") -> str:
    """The ref of ``owner``'s embeddings of dataset file ``source`` under ``encoder_id``;
    ``more`` tells apart several derived from one file (a validation split's texts)."""
    return f"{EMBEDDINGS}/{encoder_id}/{owner}/{source}" + (f".{more}" if more else "")


class ArtifactMissingError(LookupError):
    """No blob with that hash (or no such ref) in the store."""


def default_root() -> Path:
    # Same defaults as the platform's settings (ARTIFACT_DIR, else DATA_DIR/artifacts).
    configured = os.environ.get("ARTIFACT_DIR", "").strip()
    if configured:
        return Path(configured)
    data_dir = os.environ.get("DATA_DIR", "").strip()
    if data_dir:
        return Path(data_dir) / "artifacts"
    return Path(__file__).resolve().parents[1] / "var" / "artifacts"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ArtifactStore:
    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    def _blob(self, digest: str) -> Path:
        if not _HASH.fullmatch(digest):
            raise ArtifactMissingError(f"not an artifact hash: {digest!r}")
        return self.root / "blobs" / digest[:2] / digest

    def _ref(self, name: str) -> Path:
        if not _REF.fullmatch(name) or ".." in name:
            raise ValueError(f"invalid ref name: {name!r}")
        return self.root / "refs" / name

    @staticmethod
    def _write_atomic(path: Path, data: bytes) -> None:
        # Write to a temporary file in the same directory, then rename: a reader (another
        # process) sees either no file or the whole file, never a half-written one.
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put(self, data: bytes) -> str:
        """Store ``data``; returns its hash. Storing the same bytes again is a no-op."""
        digest = sha256(data)
        path = self._blob(digest)
        try:
            os.utime(path)  # stored already: touched, so a release now leaves it (release)
        except FileNotFoundError:
            self._write_atomic(path, data)
        return digest

    def release(self, digest: str, *, unless_newer_than_s: float) -> bool:
        """Remove a blob nothing refers to any more, unless it was stored (or stored again)
        within ``unless_newer_than_s``: an upload of the same bytes may be about to refer
        to it. True if removed."""
        path = self._blob(digest)
        # Moved aside before the last look at its time: a ``put`` from the move on finds no
        # file and writes one of its own, and one that touched it between the first look
        # and the move shows in the moved file's time (a stat then an unlink removed a blob
        # an upload had just been told was stored).
        aside = path.with_name(f".released-{digest}-{os.getpid()}-{threading.get_ident()}")
        try:
            if time.time() - path.stat().st_mtime < unless_newer_than_s:
                return False
            os.rename(path, aside)
        except FileNotFoundError:
            return False
        if time.time() - aside.stat().st_mtime < unless_newer_than_s:
            os.rename(aside, path)  # stored again meanwhile (the same bytes if put wrote)
            return False
        aside.unlink()
        return True

    def get(self, digest: str) -> bytes:
        path = self._blob(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ArtifactMissingError(digest) from None
        # NOTE: verified on read: a corrupted blob must fail loudly, not train a model on
        # garbage or serve a half-written head.
        if sha256(data) != digest:
            raise ArtifactMissingError(f"artifact {digest} is corrupted")
        return data

    def exists(self, digest: str) -> bool:
        try:
            return self._blob(digest).exists()
        except ArtifactMissingError:
            return False

    def size(self, digest: str) -> int:
        try:
            return self._blob(digest).stat().st_size
        except FileNotFoundError:
            raise ArtifactMissingError(digest) from None

    def ref_set(self, name: str, digest: str) -> None:
        self._write_atomic(self._ref(name), digest.encode())

    def embeddings_release(self, owner: str, source: str) -> int:
        """Remove the embeddings ``owner``'s jobs derived from dataset file ``source`` (under
        every encoder) and their blobs, once the caller found no dataset or unfinished job
        of ``owner`` refers to it: data derived from a deleted dataset leaves with it. A job
        that needs them again computes them again. Each owner's embeddings are bytes of its
        own (``workers.training.head.embeddings_get``), so no other tenant's ref points at
        a blob removed here. Returns how many were removed."""
        if (
            not _HASH.fullmatch(source)
            or not _REF.fullmatch(owner)
            or "/" in owner
            or ".." in owner
        ):
            raise ValueError(f"invalid embeddings owner or source: {owner!r} {source!r}")
        root = self.root / "refs" / EMBEDDINGS
        removed = 0
        for encoder in sorted(root.iterdir()) if root.is_dir() else []:
            for ref in sorted((encoder / owner).glob(f"{source}*")):
                if ref.name != source and not ref.name.startswith(f"{source}."):
                    continue
                try:
                    digest = ref.read_text().strip()
                    ref.unlink()
                except FileNotFoundError:
                    continue  # another sweep took it
                if _HASH.fullmatch(digest):
                    self.release(digest, unless_newer_than_s=0)
                removed += 1
        return removed

    def ref_get(self, name: str) -> str | None:
        """The hash a ref points at, or None when the ref (or its blob) is missing."""
        try:
            digest = self._ref(name).read_text().strip()
        except FileNotFoundError:
            return None
        return digest if self.exists(digest) else None
