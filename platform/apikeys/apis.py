from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from core.pagination import LIST_PARAMETERS, LIST_QUERY, list_body, paginate
from core.serializers import DeletedSerializer, ErrorSerializer, validated
from core.views import TenantAPIView

from .models import Scope
from .revocation import api_key_revoke
from .selectors import api_key_get, api_keys_visible
from .serializers import (
    ApiKeyCreateSerializer,
    ApiKeyListSerializer,
    ApiKeyRotateSerializer,
    ApiKeySerializer,
    ApiKeyWithSecretSerializer,
)
from .services import CreatedKey, api_key_create, api_key_rotate


def _with_secret(created: CreatedKey) -> dict[str, Any]:
    return {**ApiKeySerializer(created.key).data, "secret": created.secret}


class ApiKeyListCreateApi(TenantAPIView):
    required_scopes = {"*": Scope.ADMIN}
    query_parameters = {"GET": LIST_QUERY}

    @extend_schema(
        operation_id="api_keys_list",
        parameters=LIST_PARAMETERS,
        responses={200: ApiKeyListSerializer},
    )
    def get(self, request: Request) -> Response:
        keys = api_keys_visible(tenant=self.tenant, caller=self.api_key)
        page, has_more = paginate(
            keys,
            query_params=request.query_params,
            cursors=api_keys_visible(tenant=self.tenant, caller=self.api_key, revoked=True),
        )
        return Response(list_body(page, has_more, lambda k: ApiKeySerializer(k).data))

    @extend_schema(
        operation_id="api_keys_create",
        request=ApiKeyCreateSerializer,
        examples=[
            OpenApiExample(
                "An inference key",
                request_only=True,
                value={"name": "production", "scopes": ["inference"]},
            ),
        ],
        responses={201: ApiKeyWithSecretSerializer},
    )
    def post(self, request: Request) -> Response:
        data = validated(ApiKeyCreateSerializer, request.data)
        created = api_key_create(
            tenant=self.tenant,
            name=data["name"],
            scopes=data["scopes"],
            mode=data.get("mode") or self.api_key.mode,
            expires_at=data.get("expires_at"),
            never_expires="expires_at" in data and data["expires_at"] is None,
            created_by=self.api_key,
        )
        return Response(_with_secret(created), status=201)


class ApiKeyDetailApi(TenantAPIView):
    required_scopes = {"*": Scope.ADMIN}

    @extend_schema(operation_id="api_keys_retrieve", responses={200: ApiKeySerializer})
    def get(self, request: Request, key_id: str) -> Response:
        key = api_key_get(tenant=self.tenant, key_id=key_id, caller=self.api_key)
        return Response(ApiKeySerializer(key).data)

    @extend_schema(
        operation_id="api_keys_revoke",
        responses={
            200: DeletedSerializer,
            409: OpenApiResponse(
                ErrorSerializer,
                description="The tenant's last live, unexpired key with the admin scope"
                " (code last_admin_key): create another one first.",
            ),
        },
    )
    def delete(self, request: Request, key_id: str) -> Response:
        key = api_key_revoke(tenant=self.tenant, key_id=key_id, caller=self.api_key)
        return Response({"id": key.id, "object": "api_key", "deleted": True})


class ApiKeyRotateApi(TenantAPIView):
    required_scopes = {"*": Scope.ADMIN}

    @extend_schema(
        operation_id="api_keys_rotate",
        request=ApiKeyRotateSerializer,
        responses={
            200: ApiKeyWithSecretSerializer,
            409: OpenApiResponse(
                ErrorSerializer,
                description="A grace period asked for while an earlier rotation's still runs"
                " (code rotation_in_progress), the key has expired (code key_expired: a new"
                " secret would not work either), or Idempotency-Key reused.",
            ),
        },
    )
    def post(self, request: Request, key_id: str) -> Response:
        # No body at all is {}; any other body must be an object.
        data = validated(ApiKeyRotateSerializer, {} if request.stream is None else request.data)
        created = api_key_rotate(
            tenant=self.tenant,
            key_id=key_id,
            grace_period_seconds=data["grace_period_seconds"],
            caller=self.api_key,
        )
        return Response(_with_secret(created))
