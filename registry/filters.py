"""Filtersets shared by the API and the dashboard tables."""

from __future__ import annotations

import django_filters

from core.filters import BooleanFilter, FilterSet
from registry.models import Bundle, Model, ModelVersion


class ModelFilter(FilterSet):
    class Meta:
        model = Model
        fields = ["task", "role"]


class ModelVersionFilter(FilterSet):
    deprecated = BooleanFilter(field_name="deprecated_at", lookup_expr="isnull", exclude=True)

    class Meta:
        model = ModelVersion
        fields = ["version"]


class BundleFilter(FilterSet):
    model = django_filters.CharFilter(field_name="version__model__name")
    version = django_filters.CharFilter(field_name="version__version")

    class Meta:
        model = Bundle
        fields = ["target", "sha256"]
