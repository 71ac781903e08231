"""The request body as Django can read it, whatever framing or coding the client chose.

Django reads a body only as far as ``CONTENT_LENGTH`` says, and reads it as sent:
- a body sent with ``Transfer-Encoding: chunked`` has no Content-Length (granian hands the
  app the de-chunked body and nothing that says how long it is), so Django saw an empty
  body and refused a valid request as missing its fields. Such a body is read here, up to
  the largest body the API takes plus one byte (so that a bigger one is still a 413), and
  its length set;
- a body sent with ``Content-Encoding: gzip`` or ``deflate`` is inflated here, up to the
  same bound (a small body cannot inflate past it), and the header dropped. A body that
  does not inflate keeps its header, and so does any other coding: the API answers 400
  ``invalid_content_encoding`` or 415 ``unsupported_content_encoding`` (``core.views``)."""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
# Content codings undone here, as zlib's window bits (16 + : a gzip header and trailer).
CODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def body_limit() -> int:
    """The largest body any route takes: a classification, or a dataset upload with its
    multipart framing."""
    return max(settings.DATA_UPLOAD_MAX_MEMORY_SIZE, settings.DATASET_MAX_BYTES) + (1 << 20)


def _read(stream: Any, size: int) -> bytes:
    parts, left = [], size
    while left > 0 and (chunk := stream.read(min(left, 1 << 16))):
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


class ReadableBody:
    """WSGI middleware around the Django application (``config.wsgi``)."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        length = environ.get("CONTENT_LENGTH") or ""
        chunked = not length and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        coding = environ.get("HTTP_CONTENT_ENCODING", "").strip().lower()
        if coding == "identity":
            del environ["HTTP_CONTENT_ENCODING"]
        limit = body_limit() + 1
        if length.isdigit() and int(length) >= limit:
            pass  # too big as sent: Django's 413, without reading it
        elif coding in CODINGS or chunked:
            body = _read(environ["wsgi.input"], int(length) if length.isdigit() else limit)
            if coding in CODINGS:
                inflater = zlib.decompressobj(CODINGS[coding])
                try:
                    inflated: bytes | None = inflater.decompress(body, limit)
                except zlib.error:
                    inflated = None
                # Whole (or past the bound: a 413 then); else corrupt or cut short, and
                # left as sent, header and all: a 400 says so.
                if inflated is not None and (inflater.eof or len(inflated) >= limit):
                    body = inflated
                    del environ["HTTP_CONTENT_ENCODING"]
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        return self.app(environ, start_response)
