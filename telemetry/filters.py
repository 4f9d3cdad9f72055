"""Filtersets shared by the API and the dashboard tables."""

from __future__ import annotations

import django_filters

from core.filters import BooleanFilter, FilterSet, IsoDateTimeFilter
from telemetry.models import Alert, AlertRule, DeviceEvent


class AlertFilter(FilterSet):
    state = django_filters.MultipleChoiceFilter(choices=Alert.State.choices)
    live = BooleanFilter(method="by_live", label="Not resolved")
    rule = django_filters.CharFilter(field_name="rule__kind")
    severity = django_filters.ChoiceFilter(field_name="rule__severity", choices=AlertRule.Severity.choices)
    site = django_filters.CharFilter(field_name="device__site__slug")
    device = django_filters.CharFilter(field_name="device__device_id")
    since = IsoDateTimeFilter(field_name="since", lookup_expr="gte")

    class Meta:
        model = Alert
        fields = ["state", "rule", "severity", "site", "device"]

    def by_live(self, queryset, name, value):
        resolved = Alert.State.RESOLVED
        return queryset.exclude(state=resolved) if value else queryset.filter(state=resolved)


class DeviceEventFilter(FilterSet):
    kind = django_filters.CharFilter(help_text="Only events of this kind, e.g. model_swap.")
    since = IsoDateTimeFilter(field_name="at", lookup_expr="gte", help_text="Events at or after this time.")
    until = IsoDateTimeFilter(field_name="at", lookup_expr="lt", help_text="Events before this time.")

    class Meta:
        model = DeviceEvent
        fields = ["kind", "since", "until"]
