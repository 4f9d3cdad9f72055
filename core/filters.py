"""What every app's filtersets build on: a query parameter the server cannot read is refused.

django-filter reads a boolean it does not understand (``?online=bogus``) as
"no filter" and DRF drops an unknown ``?ordering=`` field, so a typo lists
everything and looks like an answer. Here both are errors: the API answers
400 ``invalid`` naming the parameter, the dashboard shows the reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import django_filters
from django import forms
from django.db import models
from django_filters.filterset import FILTER_FOR_DBFIELD_DEFAULTS
from rest_framework import exceptions
from rest_framework import filters as drf_filters


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


class FilterSet(django_filters.FilterSet):
    """Base of every app's filterset: boolean filters generated from model fields are strict too."""

    FILTER_DEFAULTS = {
        **FILTER_FOR_DBFIELD_DEFAULTS,
        models.BooleanField: {"filter_class": BooleanFilter},
    }


class OrderingFilter(drf_filters.OrderingFilter):
    """DRF's ``?ordering=``, refusing a field the view does not offer instead of ignoring it."""

    def remove_invalid_fields(self, queryset: Any, fields: Iterable[str], view: Any, request: Any) -> list[str]:
        fields = list(fields)
        valid = super().remove_invalid_fields(queryset, fields, view, request)
        unknown = [term for term in fields if term and term not in valid]
        if unknown:
            offered = ", ".join(name for name, _ in self.get_valid_fields(queryset, view, {"request": request}))
            message = f"Unknown ordering {', '.join(unknown)}; use {offered or 'nothing'}, with - to reverse."
            raise exceptions.ValidationError({self.ordering_param: [message]})
        return valid
