"""Filtersets shared by the API and the dashboard tables."""

from __future__ import annotations

import django_filters

from core.filters import FilterSet, IsoDateTimeFilter
from escalations.models import Escalation


class EscalationFilter(FilterSet):
    site = django_filters.CharFilter(field_name="site__slug")
    device = django_filters.CharFilter(field_name="device__device_id")
    state = django_filters.MultipleChoiceFilter(choices=Escalation.State.choices)
    model_version = django_filters.CharFilter()
    since = IsoDateTimeFilter(field_name="received_at", lookup_expr="gte", help_text="Received at or after this time.")
    until = IsoDateTimeFilter(field_name="received_at", lookup_expr="lt", help_text="Received before this time.")

    class Meta:
        model = Escalation
        fields = ["site", "device", "state", "model_name", "model_version", "since", "until"]
