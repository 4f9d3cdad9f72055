"""What every app's filtersets build on: a query parameter the server cannot read is refused.

django-filter reads a boolean it does not understand (``?online=bogus``) as
"no filter" and DRF drops an unknown ``?ordering=`` field, so a typo lists
everything and looks like an answer. Here both are errors: the API answers
400 ``invalid`` naming the parameter, the dashboard shows the reason.

A date-time parameter is refused as well when PostgreSQL or Python could not
hold it: a UTC offset beyond ±14:00 (PostgreSQL refuses the query, a 500) or a
moment that falls outside years 1 to 9999 once in UTC.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

import django_filters
from django import forms
from django.db import models
from django_filters.filterset import FILTER_FOR_DBFIELD_DEFAULTS
from rest_framework import exceptions, serializers
from rest_framework import filters as drf_filters

MAX_UTC_OFFSET = timedelta(hours=14)
OFFSET_MESSAGE = "The UTC offset must be within -14:00 and +14:00."
RANGE_MESSAGE = "The date-time must fall within the years 1 to 9999 in UTC."
# The same bounds for the schema: a year from 0001 and an offset within ±14:00 (the edges of years 1
# and 9999, which an offset can push out of range in UTC, stay refused by the check itself).
DATETIME_PATTERN = r"^(000[1-9]|00[1-9]\d|0[1-9]\d\d|[1-9]\d{3})-.*([Zz]|[+-](0\d|1[0-3]):[0-5]\d|[+-]14:00)$"


def datetime_problem(value: datetime) -> str | None:
    """Why the database cannot take ``value``, or None when it can."""
    offset = value.utcoffset()
    if offset is None:
        return None
    if abs(offset) > MAX_UTC_OFFSET:
        return OFFSET_MESSAGE
    try:
        value.astimezone(timezone.utc)
    except OverflowError:
        return RANGE_MESSAGE
    return None


class DateTimeField(django_filters.fields.IsoDateTimeField):
    """An ISO 8601 date-time the database can hold; anything else is an error."""

    def to_python(self, value: Any) -> datetime | None:
        try:
            result = super().to_python(value)
        except OverflowError:
            raise forms.ValidationError(RANGE_MESSAGE, code="invalid") from None
        problem = datetime_problem(result) if result is not None else None
        if problem:
            raise forms.ValidationError(problem, code="invalid")
        return result


class IsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = DateTimeField


class DateTimeParameter(serializers.DateTimeField):
    """DRF's date-time for query parameters and bodies, refusing what the database cannot hold."""

    def enforce_timezone(self, value: datetime) -> datetime:
        problem = datetime_problem(value)
        if problem:
            raise serializers.ValidationError(problem, code="invalid")
        return super().enforce_timezone(value)


class BooleanField(forms.Field):
    """``true``/``false`` (or ``1``/``0``, any case); empty means no filter, anything else is an error."""

    widget = forms.TextInput
    VALUES = {"true": True, "1": True, "false": False, "0": False}
    default_error_messages = {"invalid": "Enter true or false."}

    def to_python(self, value: Any) -> bool | None:
        if value is None or value == "":
            return None
        if isinstance(value, bool):
            return value
        try:
            return self.VALUES[str(value).strip().lower()]
        except KeyError:
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid") from None


class BooleanFilter(django_filters.BooleanFilter):
    field_class = BooleanField


class IntegerFilter(django_filters.NumberFilter):
    """A whole number within the bounds given (``min_value``, ``max_value``); a fraction or 2**64 is an error."""

    field_class = forms.IntegerField


class FilterSet(django_filters.FilterSet):
    """Base of every app's filterset: boolean filters generated from model fields are strict too."""

    FILTER_DEFAULTS = {
        **FILTER_FOR_DBFIELD_DEFAULTS,
        models.BooleanField: {"filter_class": BooleanFilter},
        models.DateTimeField: {"filter_class": IsoDateTimeFilter},
    }


class OrderingFilter(drf_filters.OrderingFilter):
    """DRF's ``?ordering=``, refusing a term the view does not offer instead of ignoring it.

    The value is terms joined by commas, each a field the view offers with an
    optional ``-`` to reverse; an empty value keeps the default order. The
    schema states exactly that as a pattern, so a client (or a fuzzer) knows
    what the server reads.
    """

    def get_ordering(self, request: Any, queryset: Any, view: Any) -> Any:
        raw = request.query_params.get(self.ordering_param)
        if not raw:
            return self.get_default_ordering(view)
        offered = self._offered(queryset, view, request)
        terms = raw.split(",")
        unknown = [term for term in terms if term.removeprefix("-") not in offered]
        if unknown:
            wanted = ", ".join(repr(term) for term in unknown)
            message = f"Unknown ordering {wanted}; use {', '.join(offered) or 'nothing'}, with - to reverse."
            raise exceptions.ValidationError({self.ordering_param: [message]})
        return terms

    def _offered(self, queryset: Any, view: Any, request: Any = None) -> list[str]:
        return [name for name, _ in self.get_valid_fields(queryset, view, {"request": request})]

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters: list[dict[str, Any]] = super().get_schema_operation_parameters(view)
        offered = self._offered(view.get_queryset(), view)
        term = f"-?({'|'.join(re.escape(name) for name in offered)})"
        for parameter in parameters:
            parameter["description"] = (
                f"Comma-separated fields to sort by, - before one to reverse: {', '.join(offered)}."
            )
            parameter["schema"] = {"type": "string", "pattern": f"^({term}(,{term})*)?$"}
        return parameters
