"""The OpenAPI schema lists the error answers every operation can give, each as the ``Error`` body.

An operation's own ``extend_schema(responses=...)`` still wins for any status
it names; this adds only what the shared machinery can answer: 400 where a
body or a filter is read, 401/403 behind authentication, 404 for a path with
an id, 413/415 where a body is read, 429 where a throttle applies.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular import openapi
from rest_framework.permissions import AllowAny

from core.api.serializers import ErrorSerializer

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class AutoSchema(openapi.AutoSchema):
    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses: dict[str, Any] = super()._get_response_bodies(direction)
        for status in self.error_statuses():
            if status not in responses:
                responses[status] = self._get_response_for_code(ErrorSerializer, status, direction=direction)
        return responses

    def error_statuses(self) -> list[str]:
        has_body = self.method in BODY_METHODS and self.get_request_serializer() is not None
        statuses = []
        if has_body or self._get_filter_parameters():
            statuses.append("400")
        if not all(isinstance(permission, AllowAny) for permission in self.view.get_permissions()):
            statuses += ["401", "403"]
        if "{" in self.path:
            statuses.append("404")
        if has_body:
            statuses += ["413", "415"]
        if self.view.get_throttles():
            statuses.append("429")
        return statuses
