from __future__ import annotations

from collections import Counter
from typing import IO, Any, cast

from django.conf import settings
from django.core.exceptions import TooManyFieldsSent, TooManyFilesSent
from django.utils.http import parse_header_parameters
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.parsers import DataAndFiles, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from apikeys.models import Scope
from core.errors import InvalidRequest, TooLarge
from core.pagination import LIST_PARAMETERS, LIST_QUERY, list_body, paginate
from core.serializers import DeletedSerializer, ErrorSerializer
from core.views import TenantAPIView

from . import messages
from .models import Dataset
from .selectors import dataset_get, dataset_list, dataset_to_dict
from .serializers import DatasetListSerializer, DatasetSerializer, DatasetUploadSerializer
from .services import dataset_create, dataset_delete

# Multipart framing around the file: a body this much over the file limit is refused
# before it is read.
_MULTIPART_SLACK = 64 * 1024
# How a part named ``file`` starts its Content-Disposition (as curl, requests and browsers
# write it).
FILE_PART = b'name="file"'


class UniqueFieldsMultiPartParser(MultiPartParser):
    """DRF's multipart parser, refusing a form field given more than once (400
    ``duplicate_parameter``), as the JSON parser refuses a member named twice: Django keeps
    the last ``file`` of ``-F file=@a -F file=@b`` silently, and the Idempotency-Key
    fingerprint reads one value per field too.

    NOTE: in the parser, so the refusal comes wherever the body is first read: with an
    Idempotency-Key that is ``TenantAPIView._initial`` (after admission, before the key is
    recorded), without one the view's ``post``; before anything is stored either way."""

    def parse(
        self, stream: Any, media_type: str | None = None, parser_context: Any = None
    ) -> DataAndFiles[Any, Any]:
        boundary = parse_header_parameters(media_type or "")[1].get("boundary", "")
        closing = b"--" + boundary.encode("latin-1", "replace") + b"--"
        watched = _BodyWatch(stream, [closing, FILE_PART])
        try:
            parsed = super().parse(cast(IO[Any], watched), media_type, parser_context)
        except (TooManyFieldsSent, TooManyFilesSent):
            # (Django's own refusal reached the log as an ERROR traceback per request, and
            # the caller a 400 "could not be understood".)
            raise InvalidRequest(
                messages.TOO_MANY_PARTS.format(
                    fields=settings.DATA_UPLOAD_MAX_NUMBER_FIELDS,
                    files=settings.DATA_UPLOAD_MAX_NUMBER_FILES,
                ),
                code="invalid_multipart",
            ) from None
        # NOTE: Django's parser drops, without a word, a part the body ends inside of and
        # one whose headers are not UTF-8 (a filename in another encoding): such a file was
        # answered "send the field 'file'", which was sent.
        if boundary and closing not in watched.seen:
            raise InvalidRequest(messages.MULTIPART_CUT_OFF, code="invalid_multipart")
        if FILE_PART in watched.seen and "file" not in parsed.files and "file" not in parsed.data:
            raise InvalidRequest(
                messages.FILE_PART_UNREADABLE, code="invalid_parameter", param="file"
            )
        # A name may repeat within the fields, within the files, or across the two
        # (``-F file=@a.jsonl -F file=text``).
        counts = Counter({name: len(parsed.data.getlist(name)) for name in parsed.data})
        counts.update({name: len(parsed.files.getlist(name)) for name in parsed.files})
        twice = next((name for name, count in counts.items() if count > 1), None)
        if twice is not None:
            for uploads in parsed.files.lists():
                for upload in uploads[1]:
                    upload.close()  # a temporary file is removed now, not when collected
            raise InvalidRequest(
                messages.FIELD_GIVEN_TWICE.format(name=twice),
                code="duplicate_parameter",
                param=twice,
            )
        return parsed


class _BodyWatch:
    """A request body as the multipart parser reads it, noting which of ``needles`` went by
    (a needle split across two reads included)."""

    def __init__(self, stream: Any, needles: list[bytes]) -> None:
        self._stream, self._left = stream, set(needles)
        self._keep = max(len(needle) for needle in needles)
        self._tail, self.seen = b"", set[bytes]()

    def read(self, *args: Any) -> bytes:
        chunk: bytes = self._stream.read(*args)
        if chunk and self._left:
            window = self._tail + chunk
            found = {needle for needle in self._left if needle in window}
            self.seen |= found
            self._left -= found
            self._tail = window[-self._keep :]
        return chunk


def _dataset(dataset: Dataset) -> Any:
    # Rendered through the documented serializer: the body is plain JSON (an idempotent
    # replay stores it) and cannot drift from the OpenAPI document.
    return DatasetSerializer(dataset_to_dict(dataset)).data


class DatasetListCreateApi(TenantAPIView):
    required_scopes = {"GET": Scope.TRAINING, "POST": Scope.TRAINING}
    query_parameters = {"GET": LIST_QUERY}
    parser_classes = [UniqueFieldsMultiPartParser]

    @extend_schema(
        operation_id="datasets_list",
        parameters=LIST_PARAMETERS,
        responses={200: DatasetListSerializer},
    )
    def get(self, request: Request) -> Response:
        page, has_more = paginate(
            dataset_list(tenant=self.tenant),
            query_params=request.query_params,
            cursors=dataset_list(tenant=self.tenant, deleted=True),
        )
        return Response(list_body(page, has_more, _dataset))

    @extend_schema(
        operation_id="datasets_create",
        request={"multipart/form-data": DatasetUploadSerializer},
        responses={
            201: DatasetSerializer,
            409: OpenApiResponse(
                ErrorSerializer,
                description=(
                    "The tenant's datasets would pass their storage limit"
                    " (storage_limit_reached), or Idempotency-Key reused with another body."
                ),
            ),
            413: OpenApiResponse(ErrorSerializer, description="The file is over the limit."),
        },
    )
    def post(self, request: Request) -> Response:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
        if length > settings.DATASET_MAX_BYTES + _MULTIPART_SLACK:
            raise TooLarge(
                messages.UPLOAD_TOO_LARGE.format(size=length, limit=settings.DATASET_MAX_BYTES),
                code="file_too_large",
                param="file",
            )
        for name in [*request.POST.keys(), *request.FILES.keys()]:
            if name != "file":
                raise InvalidRequest(
                    messages.UNKNOWN_FIELD.format(name=name), code="unknown_parameter", param=name
                )
        upload = request.FILES.get("file")
        if upload is None and "file" in request.POST:
            # ``-F file=<x.jsonl`` (curl's text field) or a part without a filename: the
            # field was sent, so "send the field 'file'" sent its caller looking elsewhere.
            raise InvalidRequest(messages.FILE_NOT_A_FILE, code="invalid_parameter", param="file")
        if upload is None:
            raise InvalidRequest(messages.FILE_MISSING, code="missing_parameter", param="file")
        dataset = dataset_create(tenant=self.tenant, upload=upload)
        return Response(_dataset(dataset), status=201)


class DatasetDetailApi(TenantAPIView):
    required_scopes = {"GET": Scope.TRAINING, "DELETE": Scope.TRAINING}

    @extend_schema(operation_id="datasets_retrieve", responses={200: DatasetSerializer})
    def get(self, request: Request, dataset_id: str) -> Response:
        dataset = dataset_get(tenant=self.tenant, dataset_id=dataset_id, param="id")
        return Response(_dataset(dataset))

    @extend_schema(
        operation_id="datasets_delete",
        responses={
            200: DeletedSerializer,
            409: OpenApiResponse(
                ErrorSerializer,
                description="A fine-tuning job that has not finished uses the dataset"
                " (code dataset_in_use): wait for it, or cancel it, first.",
            ),
        },
    )
    def delete(self, request: Request, dataset_id: str) -> Response:
        dataset = dataset_delete(
            tenant=self.tenant, dataset_id=dataset_id, livemode=self.api_key.livemode
        )
        return Response({"id": dataset.id, "object": "dataset", "deleted": True})
