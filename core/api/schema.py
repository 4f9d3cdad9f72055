"""The OpenAPI schema lists the error answers every operation can give, each as the ``Error`` body.

An operation's own ``extend_schema(responses=...)`` still wins for any status
it names; this adds what the shared machinery can answer: 400 where a body, a
filter or a page (``?limit=&offset=``) is read, 401/403 behind
authentication, 404 for a path with an id, 413/415 where a body is read, 429
where a throttle applies, and on every operation 406 (an ``Accept`` the API
cannot produce) and 500 (a failure, logged). 405 answers a method an
operation does not have, so it belongs to no operation in the schema.

A text field the server refuses when blank or holding a NUL character says so
in the schema (``minLength``, ``pattern``), so what the schema calls valid is
what the server accepts.
"""

from __future__ import annotations

from typing import Any

from django.core import validators
from drf_spectacular import openapi
from rest_framework import serializers
from rest_framework.permissions import AllowAny

from core.api.serializers import NOT_BLANK, ErrorSerializer
from core.filters import DATETIME_PATTERN, DateTimeParameter

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# DRF's CharField strips surrounding whitespace before its blank check and refuses NUL anywhere.
NO_NUL = "^[^\\x00]+$"  # the empty value is the other branch spectacular adds for allow_blank


class AutoSchema(openapi.AutoSchema):
    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses: dict[str, Any] = super()._get_response_bodies(direction)
        for status in self.error_statuses():
            if status not in responses:
                responses[status] = self._get_response_for_code(ErrorSerializer, status, direction=direction)
        return responses

    def error_statuses(self) -> list[str]:
        has_body = self.method in BODY_METHODS and self.get_request_serializer() is not None
        paged = self._is_list_view() and self._get_paginator() is not None
        statuses = []
        if has_body or self._get_filter_parameters() or paged:
            statuses.append("400")
        if not all(isinstance(permission, AllowAny) for permission in self.view.get_permissions()):
            statuses += ["401", "403"]
        if "{" in self.path:
            statuses.append("404")
        statuses.append("406")
        if has_body:
            statuses += ["413", "415"]
        if self.view.get_throttles():
            statuses.append("429")
        statuses.append("500")
        return statuses

    def _insert_field_validators(self, field: Any, schema: dict[str, Any]) -> None:
        # Before spectacular's own: a field's RegexValidator keeps its pattern, and spectacular
        # then adds the empty-string branch for allow_blank around whatever pattern there is.
        if (
            isinstance(field, serializers.CharField)
            and not field.read_only
            and schema.get("type") == "string"
            and "format" not in schema
            and not any(isinstance(v, validators.RegexValidator) for v in field.validators)
        ):
            if not field.allow_blank:
                schema.setdefault("minLength", 1)
            schema.setdefault("pattern", NO_NUL if field.allow_blank else NOT_BLANK)
        elif isinstance(field, DateTimeParameter) and not field.read_only:
            schema.setdefault("pattern", DATETIME_PATTERN)
        elif isinstance(field, serializers.RelatedField) and not field.read_only and schema.get("type") == "string":
            schema.setdefault("pattern", NO_NUL)
        elif isinstance(field, serializers.ListField) and not field.allow_empty:
            schema.setdefault("minItems", 1)
        super()._insert_field_validators(field, schema)

    def _get_filter_parameters(self) -> list[dict[str, Any]]:
        parameters: list[dict[str, Any]] = super()._get_filter_parameters()
        filters = getattr(getattr(self.view, "filterset_class", None), "base_filters", {})
        for parameter in parameters:
            schema = parameter.get("schema", {})
            bounds = getattr(filters.get(parameter.get("name")), "extra", {})
            if schema.get("type") == "integer":
                # A filter's bounds (core.filters.IntegerFilter's min_value, max_value) are the schema's.
                for bound, key in (("min_value", "minimum"), ("max_value", "maximum")):
                    if bounds.get(bound) is not None:
                        schema[key] = bounds[bound]
            if parameter.get("name") == "ordering" or schema.get("type") == "array":
                continue
            if schema.get("type") == "string" and not (set(schema) & {"format", "enum", "pattern"}):
                # A filter refuses NUL like every text field; an empty value means no filter.
                schema["pattern"] = "^[^\\x00]*$"
            elif schema:
                if schema.get("format") == "date-time":
                    schema["pattern"] = DATETIME_PATTERN
                # An empty value means no filter: `?since=` or `?online=` lists everything.
                parameter["schema"] = {"anyOf": [schema, {"type": "string", "maxLength": 0}]}
        return parameters
