"""What ``OPTIONS`` answers: 200, the ``Allow`` header and an empty object. DRF's default
metadata described each view by its class name, its renderers and its parsers, none of it
in the OpenAPI document, which is where a client learns what a route takes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rest_framework.metadata import BaseMetadata

if TYPE_CHECKING:  # rest_framework.views imports this module while it loads
    from rest_framework.request import Request
    from rest_framework.views import APIView


class AllowOnly(BaseMetadata):
    def determine_metadata(self, request: Request, view: APIView) -> dict[str, Any]:
        return {}
