"""API tokens over the API, for admins: list, create (the secret is in that answer only), revoke."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.response import Response

from core import services
from core.api.authentication import IsAdmin
from core.api.pagination import LimitOffsetPagination
from core.api.serializers import (
    ApiTokenCreatedSerializer,
    ApiTokenRequestSerializer,
    ApiTokenSerializer,
    ErrorSerializer,
    TokenRevokeSerializer,
)
from core.models import ApiToken


@extend_schema_view(
    create=extend_schema(request=ApiTokenRequestSerializer, responses={201: ApiTokenCreatedSerializer}),
)
class ApiTokenViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Scoped, expiring API tokens for CI and scripts. Staff sessions, or tokens with the ``admin`` scope."""

    serializer_class = ApiTokenSerializer
    permission_classes = [IsAdmin]
    parser_classes = [JSONParser]
    pagination_class = LimitOffsetPagination
    queryset = ApiToken.objects.select_related("user").order_by("-created_at", "-id")
    ordering_fields = ["name", "created_at", "expires_at", "last_used_at"]

    def create(self, request: Request) -> Response:
        """Issue a token; its secret (``token``) is in this answer only, the server keeps its hash."""
        body = ApiTokenRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        token, secret = services.issue_token(
            actor=request.user,
            user=data.get("user") or request.user,
            name=data["name"],
            scopes=data["scopes"],
            expires_at=data.get("expires_at"),
            via=_token(request),
        )
        answer = dict(ApiTokenSerializer(token).data)
        answer["token"] = secret
        return Response(answer, status=status.HTTP_201_CREATED)

    @extend_schema(request=TokenRevokeSerializer, responses={200: ApiTokenSerializer, 409: ErrorSerializer})
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str | None = None) -> Response:
        """Revoke the token: every request with it is refused from now on."""
        token = self.get_object()
        body = TokenRevokeSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        row = services.revoke_token(
            token, actor=request.user, reason=body.validated_data["reason"], via=_token(request)
        )
        return Response(ApiTokenSerializer(row).data)


def _token(request: Request) -> ApiToken | None:
    return request.auth if isinstance(request.auth, ApiToken) else None
