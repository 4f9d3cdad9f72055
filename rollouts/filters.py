"""Filtersets of the rollouts API."""

from __future__ import annotations

import django_filters

from core.filters import FilterSet, IntegerFilter
from rollouts.models import RolloutDevice


class RolloutDeviceFilter(FilterSet):
    state = django_filters.MultipleChoiceFilter(choices=RolloutDevice.STATES)
    stage = IntegerFilter(field_name="stage_index", min_value=0, max_value=32767, help_text="The stage's index.")
    site = django_filters.CharFilter(field_name="device__site__slug")

    class Meta:
        model = RolloutDevice
        fields = ["state", "stage", "site"]
