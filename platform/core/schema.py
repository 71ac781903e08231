"""drf-spectacular, told the truth about what every operation can answer: besides its own
responses, any authenticated endpoint may answer with the error shape for 400, 401, 403,
404, 405, 406, 413, 415, 429 and 503, and a POST with 402 and 409 (idempotency); and the headers
each answer carries (X-Request-Id, RateLimit-*, Retry-After, Idempotent-Replayed). And
about what a request body may hold: a strict serializer's object has no other properties,
and its strings no NUL (``core.serializers``)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema as BaseAutoSchema
from drf_spectacular.plumbing import force_instance
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, PolymorphicProxySerializer
from rest_framework import serializers
from rest_framework.exceptions import NotAcceptable
from rest_framework.negotiation import DefaultContentNegotiation

from .serializers import DistinctListField, ErrorSerializer, StrictSerializer, StrictStringField

# A string without NUL (U+0000), as a JSON Schema (ECMA 262) pattern.
NO_NUL = "^[^\\x00]*$"

COMMON_ERRORS = {
    400: "Invalid request (the error names the parameter).",
    401: "Missing, malformed, revoked or expired API key.",
    403: "The key lacks the scope, or the account is suspended.",
    404: "No such object (or it belongs to another tenant).",
    405: "Method not allowed.",
    413: "Request body too large.",
    406: "The Accept header admits no JSON: every answer here is application/json.",
    415: "Unsupported media type, or a compressed body (Content-Encoding).",
    429: "Rate limited (plan or key rate, or the concurrency cap); see Retry-After.",
    503: "A store it needs (Redis, Stripe) cannot be reached for now; retry after a wait.",
}


RATE_LIMIT_HEADERS = {
    "RateLimit-Limit": "Requests the key may make in the current window.",
    "RateLimit-Remaining": "Requests left in the current window.",
    "RateLimit-Reset": "Seconds until the window resets.",
}


def _takes_empty(schema: dict[str, Any]) -> bool:
    """Whether a string schema accepts "": no format, no minLength, and no pattern but the
    one every string field gets (NO_NUL). (Python's re is not ECMA 262's: other patterns
    are not judged here.)"""
    if schema.get("type") != "string" or "format" in schema or schema.get("minLength", 0) > 0:
        return False
    return schema.get("pattern") in (None, NO_NUL)


class AutoSchema(BaseAutoSchema):
    def _map_serializer(
        self, serializer: Any, direction: Any, bypass_extensions: bool = False
    ) -> dict[str, Any]:
        schema: dict[str, Any] = super()._map_serializer(serializer, direction, bypass_extensions)
        if direction == "request" and isinstance(serializer, StrictSerializer):
            schema["additionalProperties"] = False  # an unknown parameter is a 400
            schema.update(serializer.schema_rules)
        return schema

    def _get_request_for_media_type(self, serializer: Any, direction: Any = "request") -> Any:
        schema, required = super()._get_request_for_media_type(serializer, direction)
        # A oneOf of shapes that each have required fields needs a body too.
        if isinstance(serializer, PolymorphicProxySerializer):
            shapes = [force_instance(shape) for shape in serializer.serializers]
            required = all(any(f.required for f in s.fields.values()) for s in shapes)
        return schema, required

    def _insert_field_validators(self, field: Any, schema: dict[str, Any]) -> None:
        super()._insert_field_validators(field, schema)
        # drf-spectacular offers "" beside a constrained string that allows blank; a field
        # that lets blank through only to refuse it with its own error code says so.
        if (getattr(field, "blank_is_refused", False) and "oneOf" in schema) or (
            "oneOf" in schema and _takes_empty(schema["oneOf"][0])
        ):
            schema.update(schema.pop("oneOf")[0])

    def _map_serializer_field(
        self, field: Any, direction: Any, bypass_extensions: bool = False
    ) -> dict[str, Any]:
        schema: dict[str, Any] = super()._map_serializer_field(field, direction, bypass_extensions)
        if (
            direction == "request"
            and isinstance(field, StrictStringField)
            and schema.get("type") == "string"
        ):
            schema.setdefault("pattern", NO_NUL)
        if isinstance(field, DistinctListField) and schema.get("type") == "array":
            schema["uniqueItems"] = True
        # drf-spectacular maps a ListField's bounds but not a ListSerializer's.
        if isinstance(field, serializers.ListSerializer) and schema.get("type") == "array":
            bounds = (("maxItems", "max_length"), ("minItems", "min_length"))
            for keyword, attribute in bounds:
                if (value := getattr(field, attribute, None)) is not None:
                    schema.setdefault(keyword, value)
        return schema

    def _scope(self) -> str | None:
        """The scope a key needs for this operation (``apikeys.permissions.HasScope``)."""
        scopes: dict[str, str] = getattr(self.view, "required_scopes", None) or {}
        return scopes.get(self.method) or scopes.get("*")

    def get_operation(self, *args: Any, **kwargs: Any) -> Any:
        operation = super().get_operation(*args, **kwargs)
        if operation is not None and (scope := self._scope()):
            # Said in its description too (``core.operation_docs``): an outside checker met
            # 403s that only DELETE /v1/models/{id} explained.
            operation["x-required-scope"] = scope
        return operation

    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        extra = dict(COMMON_ERRORS)
        if scope := self._scope():
            extra[403] = (
                f"The key lacks the `{scope}` scope, the account is suspended, or a rule the"
                " error's code names refuses the call."
            )
        if self.method == "POST":
            extra[409] = "Idempotency-Key reused with another body, or still in progress."
            extra[402] = "Quota used up, or the subscription is unpaid (billable calls)."
        for status, description in extra.items():
            if str(status) not in responses:
                responses[str(status)] = self._get_response_for_code(
                    OpenApiResponse(response=ErrorSerializer, description=description),
                    str(status),
                )
        for code, response in responses.items():
            response.setdefault("headers", {}).update(self._response_headers(str(code)))
        return responses

    def _response_headers(self, status: str) -> dict[str, Any]:
        """What ``core.middleware``, admission (``limits``) and idempotency put on answers."""
        headers: dict[str, Any] = {"X-Request-Id": {
            "required": True, "schema": {"type": "string"},
            "description": "This request's id (req_...): in logs, usage and the ledger.",
        }}  # fmt: skip
        if status.startswith("2") or status == "429":
            # Every answer a key's request is admitted or refused by its rate limit carries
            # them (API.md): its successes and its 429s.
            admitted = getattr(self.view, "required_scopes", None) is not None
            for name, description in RATE_LIMIT_HEADERS.items():
                headers[name] = {"required": admitted, "schema": {"type": "integer"},
                                 "description": description}  # fmt: skip
        if status in ("429", "409", "503"):
            headers["Retry-After"] = {
                "required": status == "429", "schema": {"type": "integer"},
                "description": "Seconds to wait before retrying.",
            }  # fmt: skip
        if self.method == "POST" and status.startswith("2"):
            headers["Idempotent-Replayed"] = {
                "schema": {"type": "string", "enum": ["true"]},
                "description": "Present on an Idempotency-Key replay of the first answer.",
            }
        return headers

    def get_override_parameters(self) -> list[Any]:
        params = list(super().get_override_parameters())
        if self.method == "POST":
            params.append(
                OpenApiParameter(
                    "Idempotency-Key",
                    # Printable ASCII, no surrounding spaces (HTTP strips them; the server
                    # drops other header values before the app sees them).
                    {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 255,
                        "pattern": "^[!-~]([ -~]*[!-~])?$",
                    },
                    OpenApiParameter.HEADER,
                    required=False,
                    description=(
                        "Retry safely: the same key and body replay the first response, in the"
                        " key's mode (live or test). 1 to 255 printable ASCII characters."
                    ),
                )
            )
        return params


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


_REQUEST_ID = {"X-Request-Id": {"required": True, "schema": {"type": "string"}}}
_ERROR = {"$ref": "#/components/schemas/Error"}
STRIPE_SIGNATURE = "StripeSignature"


def _answer(description: str, content: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": content, "headers": _REQUEST_ID}


def _read_only(operation_id: str, summary: str, responses: dict[str, Any]) -> dict[str, Any]:
    not_allowed = _answer("Only GET (and HEAD) are served here.", _json(_ERROR))
    return {"get": {"operationId": operation_id, "summary": summary, "tags": ["operations"],
                    "security": [], "responses": {**responses, "405": not_allowed}}}  # fmt: skip


def operations_paths(result: dict[str, Any], **_: Any) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: the routes it does not see (plain Django views):
    probes, metrics, the Stripe webhook, and this document and its two pages, so that the
    document describes every endpoint the server has."""
    checks = {"type": "object", "additionalProperties": {"type": "object"}}
    ready = {"type": "object", "required": ["status", "checks"], "properties": {
        "status": {"type": "string", "enum": ["ok", "unavailable"]}, "checks": checks}}  # fmt: skip
    alive = {"type": "object", "required": ["status"],
             "properties": {"status": {"type": "string", "enum": ["ok"]}}}  # fmt: skip
    received = {"type": "object", "required": ["received"], "properties": {
        "received": {"type": "boolean"}, "duplicate": {"type": "boolean"}}}  # fmt: skip
    result["paths"].update({
        "/healthz": _read_only("healthz", "Liveness: the process answers.",
                               {"200": _answer("Alive.", _json(alive))}),
        "/readyz": _read_only("readyz", "Readiness: database, broker and cache reachable.", {
            "200": _answer("Ready.", _json(ready)),
            "503": _answer("A dependency is unreachable (see checks).", _json(ready))}),
        "/v1/openapi.json": _read_only("openapi", "This OpenAPI 3 document.", {
            "200": _answer("The document (as application/json when asked for that; whatever"
                           " else Accept names, as the OpenAPI media type).",
                           {"application/vnd.oai.openapi+json": {"schema": {"type": "object"}},
                            "application/json": {"schema": {"type": "object"}}})}),
        "/v1/docs": _read_only("docs", "Interactive documentation (Swagger UI) of this API.", {
            "200": _answer("An HTML page.", {"text/html": {"schema": {"type": "string"}}})}),
        "/v1/redoc": _read_only("redoc", "Reference documentation (Redoc) of this API.", {
            "200": _answer("An HTML page.", {"text/html": {"schema": {"type": "string"}}})}),
        "/metrics": _read_only("metrics", "Prometheus metrics, summed over the API processes.", {
            "200": _answer("Prometheus text format.",
                           {"text/plain": {"schema": {"type": "string"}}}),
            "401": _answer("The operator set METRICS_TOKEN and the scrape did not send it as"
                           " a Bearer token.", _json(_ERROR))}),
        "/webhooks/stripe": {"post": {
            "operationId": "stripe_webhook", "tags": ["operations"],
            # The Stripe-Signature header is the webhook's credential (no API key).
            "security": [{STRIPE_SIGNATURE: []}],
            "summary": "Stripe events, verified by their Stripe-Signature header.",
            "requestBody": {"required": True, "content": _json({"type": "object"})},
            "responses": {
                "200": _answer("Recorded (or recorded before: duplicate).", _json(received)),
                "400": _answer("Signed, but not a Stripe event.", _json(_ERROR)),
                "401": _answer("No Stripe-Signature, or one no configured secret made over"
                               " these bytes within the tolerance (none, while no secret is"
                               " configured).", _json(_ERROR)),
                "405": _answer("Only POST.", _json(_ERROR)),
                "413": _answer("Request body too large.", _json(_ERROR)),
            },
        }},
    })  # fmt: skip
    result.setdefault("components", {}).setdefault("securitySchemes", {})[STRIPE_SIGNATURE] = {
        "type": "apiKey", "in": "header", "name": "Stripe-Signature",
        "description": "Stripe's signature of the raw body (t=...,v1=HMAC-SHA256).",
    }  # fmt: skip
    return result


class AnyAcceptNegotiation(DefaultContentNegotiation):
    """The document whatever ``Accept`` says: one it cannot honour (``text/html``) gets the
    OpenAPI media type, not a 406 the document does not describe (a browser, a tool)."""

    def select_renderer(self, request: Any, renderers: Any, format_suffix: Any = None) -> Any:
        try:
            return super().select_renderer(request, renderers, format_suffix)
        except NotAcceptable:
            return renderers[0], renderers[0].media_type
