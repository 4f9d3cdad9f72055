from __future__ import annotations

from typing import Any

from rest_framework import serializers

from core.api.serializers import StrictInput
from core.filters import DateTimeParameter
from telemetry import series
from telemetry.models import Alert, DeviceEvent


class SeriesQuerySerializer(serializers.Serializer):
    scope = serializers.ChoiceField(choices=["device", "site", "model"])
    key = serializers.CharField(max_length=300, help_text="device_id, site slug, or name@version for scope=model")
    start = DateTimeParameter()
    end = DateTimeParameter(required=False, help_text="Defaults to now.")
    resolution = serializers.ChoiceField(choices=["auto", "1m", "1h"], default="auto")
    points = serializers.IntegerField(min_value=1, max_value=series.MAX_POINTS, default=300)
    model = serializers.CharField(max_length=300, required=False, help_text="Only this name@version")


class PointSerializer(serializers.Serializer):
    t = serializers.DateTimeField()
    windows = serializers.IntegerField()
    frames = serializers.IntegerField()
    dropped_frames = serializers.IntegerField()
    # Declared fields leave the class namespace (DRF's metaclass), so this shadows no Serializer.errors.
    errors = serializers.IntegerField()  # type: ignore[assignment]
    escalations = serializers.IntegerField()
    fallback_windows = serializers.IntegerField()
    latency_p50_ms = serializers.FloatField(allow_null=True)
    latency_p95_ms = serializers.FloatField(allow_null=True)
    latency_p99_ms = serializers.FloatField(allow_null=True)
    mean_confidence = serializers.FloatField(allow_null=True)
    escalation_rate = serializers.FloatField(allow_null=True)
    error_rate = serializers.FloatField(allow_null=True)
    dropped_rate = serializers.FloatField(allow_null=True)
    confidence_distribution = serializers.ListField(
        child=serializers.FloatField(), help_text="Share of frames per confidence bin (all 0 without frames)."
    )


class SummarySerializer(PointSerializer):
    t = None  # type: ignore[assignment]
    class_mix = serializers.DictField(child=serializers.FloatField())


class HealthPointSerializer(serializers.Serializer):
    t = serializers.DateTimeField()
    heartbeats = serializers.IntegerField()
    cpu_percent_avg = serializers.FloatField(allow_null=True)
    cpu_percent_max = serializers.FloatField()
    temperature_c_max = serializers.FloatField(allow_null=True)
    cpu_freq_mhz_min = serializers.FloatField(allow_null=True)
    disk_percent_max = serializers.FloatField()
    outbox_depth_max = serializers.IntegerField()


class SeriesSerializer(serializers.Serializer):
    scope = serializers.CharField()
    key = serializers.CharField()
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    resolution = serializers.CharField()
    step_s = serializers.IntegerField()
    model_versions = serializers.ListField(child=serializers.CharField())
    points = PointSerializer(many=True)
    summary = SummarySerializer()
    health = HealthPointSerializer(many=True, required=False)


class AlertSerializer(serializers.ModelSerializer):
    rule = serializers.CharField(source="rule.kind", read_only=True)
    severity = serializers.CharField(source="rule.severity", read_only=True)
    threshold = serializers.FloatField(source="rule.threshold", read_only=True)
    device = serializers.CharField(source="device.device_id", read_only=True)
    device_name = serializers.CharField(source="device.name", read_only=True)
    site = serializers.CharField(source="device.site.slug", read_only=True)

    class Meta:
        model = Alert
        fields = [
            "id",
            "rule",
            "severity",
            "state",
            "device",
            "device_name",
            "site",
            "value",
            "threshold",
            "details",
            "since",
            "opened_at",
            "acknowledged_at",
            "acknowledged_by",
            "acknowledged_note",
            "resolved_at",
        ]
        read_only_fields = fields


class DeviceEventSerializer(serializers.ModelSerializer):
    device = serializers.CharField(source="device.device_id", read_only=True)
    # Declared fields leave the class namespace (DRF's metaclass), so this shadows no Serializer.data.
    data = serializers.DictField(  # type: ignore[assignment]
        read_only=True, help_text="What the device reported with the event, as it sent it."
    )

    class Meta:
        model = DeviceEvent
        fields = ["id", "device", "kind", "at", "received_at", "data"]
        read_only_fields = fields


class AcknowledgeSerializer(StrictInput, serializers.Serializer):
    note = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")

    def to_internal_value(self, data: Any) -> Any:
        return super().to_internal_value(data or {})
