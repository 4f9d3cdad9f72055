"""``?limit=&offset=`` paging that refuses what it cannot read instead of falling back to the first page.

DRF's ``LimitOffsetPagination`` reads ``?offset=abc`` or ``?limit=-5`` as
"no value", so a typo pages from the start and looks like an answer; an offset
past what PostgreSQL's ``OFFSET`` holds would be a 500. Here both are a 400
``invalid`` naming the parameter, and the schema states the bounds.
"""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions, pagination

MAX_LIMIT = 1000
# PostgreSQL's OFFSET is a bigint; nobody pages this far, so stay well inside it.
MAX_OFFSET = 2**31 - 1


class LimitOffsetPagination(pagination.LimitOffsetPagination):
    max_limit = MAX_LIMIT

    def get_limit(self, request: Any) -> int | None:
        return self._read(request, self.limit_query_param, 1, MAX_LIMIT, self.default_limit)

    def get_offset(self, request: Any) -> int:
        return self._read(request, self.offset_query_param, 0, MAX_OFFSET, 0) or 0

    @staticmethod
    def _read(request: Any, name: str, low: int, high: int, default: int | None) -> int | None:
        raw = request.query_params.get(name)
        if raw is None:
            return default
        value = int(raw) if raw.isascii() and raw.isdigit() else None
        if value is None or not low <= value <= high:
            message = f"Enter a whole number from {low} to {high}."
            raise exceptions.ValidationError({name: [message]})
        return value

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters: list[dict[str, Any]] = super().get_schema_operation_parameters(view)
        bounds = {self.limit_query_param: (1, MAX_LIMIT), self.offset_query_param: (0, MAX_OFFSET)}
        for parameter in parameters:
            low, high = bounds[parameter["name"]]
            parameter["schema"] = {"type": "integer", "minimum": low, "maximum": high}
        return parameters
