"""Filtersets shared by the API and the dashboard tables."""

from __future__ import annotations

import django_filters
from django.db.models import Q

from core.filters import BooleanFilter, FilterSet
from fleet.models import Device, Site


class SiteFilter(FilterSet):
    q = django_filters.CharFilter(method="search", label="Search slug or name")

    class Meta:
        model = Site
        fields = ["slug"]

    def search(self, queryset, name, value):
        return queryset.filter(Q(slug__icontains=value) | Q(name__icontains=value))


class DeviceFilter(FilterSet):
    site = django_filters.CharFilter(field_name="site__slug")
    online = BooleanFilter()
    revoked = BooleanFilter(field_name="revoked_at", lookup_expr="isnull", exclude=True)
    hardware_profile = django_filters.CharFilter()
    label = django_filters.CharFilter(method="by_label", label="key=value")
    q = django_filters.CharFilter(method="search", label="Search name or device id")

    class Meta:
        model = Device
        fields = ["site", "online", "hardware_profile", "agent_version"]

    def by_label(self, queryset, name, value):
        key, _, wanted = value.partition("=")
        return queryset.filter(**{f"labels__{key}": wanted}) if key.isidentifier() else queryset.none()

    def search(self, queryset, name, value):
        return queryset.filter(Q(name__icontains=value) | Q(device_id__icontains=value))
