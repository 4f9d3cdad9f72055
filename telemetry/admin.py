from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from telemetry.models import Alert, AlertRule, Baseline, BridgeStats, DeviceClock, NotificationChannel, Quarantine


@admin.register(AlertRule)
class AlertRuleAdmin(admin.ModelAdmin):
    list_display = ["kind", "enabled", "threshold", "duration_s", "severity", "description"]
    list_editable = ["enabled", "threshold", "duration_s", "severity"]


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    list_display = ["rule", "device", "state", "value", "since", "opened_at", "resolved_at"]
    list_filter = ["state", "rule"]
    list_select_related = ["rule", "device"]
    readonly_fields = [f.name for f in Alert._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Alerts are opened by their rules (telemetry.alerts), never by hand.
        return False


@admin.register(NotificationChannel)
class NotificationChannelAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "enabled", "min_severity"]


@admin.register(Baseline)
class BaselineAdmin(admin.ModelAdmin):
    list_display = ["model_name", "model_version", "source", "frames", "since", "until"]


@admin.register(BridgeStats)
class BridgeStatsAdmin(admin.ModelAdmin):
    list_display = ["bridge_id", "started_at", "updated_at"]
    readonly_fields = ["bridge_id", "counters", "started_at", "updated_at"]


@admin.register(Quarantine)
class QuarantineAdmin(admin.ModelAdmin):
    """Rows a periodic job set aside; delete one once it is dealt with."""

    list_display = ["source", "ref", "device", "reason", "occurrences", "first_at", "last_at"]
    list_filter = ["source", "reason"]
    list_select_related = ["device"]
    readonly_fields = [f.name for f in Quarantine._meta.fields]


@admin.register(DeviceClock)
class DeviceClockAdmin(admin.ModelAdmin):
    list_display = ["device", "offset_s", "device_time", "observed_at", "restamped"]
    list_select_related = ["device"]
    readonly_fields = [f.name for f in DeviceClock._meta.fields]
