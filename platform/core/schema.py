"""drf-spectacular, told the truth about what every operation can answer: besides its own
responses, any authenticated endpoint may answer with the error shape for 400, 401, 403,
404, 405, 415, 429 and 500, and a POST with 409 (idempotency)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema as BaseAutoSchema
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse

from .serializers import ErrorSerializer

COMMON_ERRORS = {
    400: "Invalid request (the error names the parameter).",
    401: "Missing, malformed, revoked or expired API key.",
    403: "The key lacks the scope, or the account is suspended.",
    404: "No such object (or it belongs to another tenant).",
    405: "Method not allowed.",
    413: "Request body too large.",
    415: "Unsupported media type.",
    429: "Rate limited (plan or key rate, or the concurrency cap); see Retry-After.",
}


class AutoSchema(BaseAutoSchema):
    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        extra = dict(COMMON_ERRORS)
        if self.method == "POST":
            extra[409] = "Idempotency-Key reused with another body, or still in progress."
            extra[402] = "Quota used up, or the subscription is unpaid (billable calls)."
        for status, description in extra.items():
            if str(status) not in responses:
                responses[str(status)] = self._get_response_for_code(
                    OpenApiResponse(response=ErrorSerializer, description=description),
                    str(status),
                )
        return responses

    def get_override_parameters(self) -> list[Any]:
        params = list(super().get_override_parameters())
        if self.method == "POST":
            params.append(
                OpenApiParameter(
                    "Idempotency-Key",
                    {"type": "string", "minLength": 1, "maxLength": 255},
                    OpenApiParameter.HEADER,
                    required=False,
                    description="Retry safely: the same key and body replay the first response.",
                )
            )
        return params
