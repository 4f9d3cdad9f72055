from __future__ import annotations

import re
from datetime import time
from typing import Any

from drf_spectacular.utils import extend_schema_field
from pydantic import ValidationError
from rest_framework import serializers

from agent.kernel import protocol
from core.api.serializers import ReasonField, StrictInput
from fleet.models import Device, EnrollmentToken, Site, zone_names

NAME_TAKEN = "Another device of this site already has this name."


HH_MM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
WINDOW_MESSAGE = 'A window is {"start": "HH:MM", "end": "HH:MM"} in local time, start and end differing, or null.'


@extend_schema_field(
    {
        "type": "object",
        "nullable": True,
        "properties": {"start": {"type": "string", "pattern": HH_MM}, "end": {"type": "string", "pattern": HH_MM}},
        "required": ["start", "end"],
        "additionalProperties": False,
        "description": "Local times (the site's timezone) when rollouts may send installs; an end before the "
        "start crosses midnight; null: always open.",
    }
)
class MaintenanceWindowField(serializers.Field):
    """The site's two window columns as one ``{"start", "end"}`` object, or null for none."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(source="*", allow_null=True, required=False, **kwargs)

    def to_representation(self, site: Site) -> dict[str, str] | None:
        start, end = site.maintenance_window_start, site.maintenance_window_end
        if start is None or end is None:
            return None
        return {"start": start.strftime("%H:%M"), "end": end.strftime("%H:%M")}

    def to_internal_value(self, data: Any) -> dict[str, time | None]:
        if data is None:
            return {"maintenance_window_start": None, "maintenance_window_end": None}
        ok = isinstance(data, dict) and set(data) == {"start", "end"}
        if not ok or not all(isinstance(v, str) and re.fullmatch(HH_MM, v) for v in data.values()):
            raise serializers.ValidationError(WINDOW_MESSAGE)
        start, end = (time.fromisoformat(data[key]) for key in ("start", "end"))
        if start == end:
            raise serializers.ValidationError(WINDOW_MESSAGE)
        return {"maintenance_window_start": start, "maintenance_window_end": end}


class SiteSerializer(StrictInput, serializers.ModelSerializer):
    device_count = serializers.IntegerField(read_only=True)
    online_count = serializers.IntegerField(read_only=True)
    maintenance_window = MaintenanceWindowField()

    def validate_timezone(self, value: str) -> str:
        if value not in zone_names():
            raise serializers.ValidationError("An IANA time zone name, e.g. Europe/Berlin or UTC.")
        return value

    class Meta:
        model = Site
        fields = [
            "id",
            "slug",
            "name",
            "description",
            "latency_budget_ms",
            "timezone",
            "maintenance_window",
            "escalation_privacy",
            "escalation_retention_days",
            "created_at",
            "device_count",
            "online_count",
        ]
        read_only_fields = ["id", "created_at"]


class DeviceSerializer(StrictInput, serializers.ModelSerializer):
    site: serializers.SlugRelatedField[Site] = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    revoked = serializers.BooleanField(source="is_revoked", read_only=True)
    labels = serializers.DictField(
        child=serializers.CharField(max_length=200, allow_blank=True, trim_whitespace=False), required=False
    )

    class Meta:
        model = Device
        fields = [
            "device_id",
            "site",
            "name",
            "hardware_profile",
            "labels",
            "agent_version",
            "online",
            "last_seen",
            "status_changed_at",
            "reported",
            "last_heartbeat",
            "desired",
            "desired_generation",
            "revoked",
            "revoked_at",
            "created_at",
        ]
        read_only_fields = [f for f in fields if f not in ("name", "labels")]

    def validate_name(self, value: str) -> str:
        device = self.instance
        if isinstance(device, Device):
            taken = Device.objects.filter(site_id=device.site_id, name=value).exclude(pk=device.pk).exists()
            if taken:
                raise serializers.ValidationError(NAME_TAKEN)
        return value

    def validate_labels(self, value: object) -> object:
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise serializers.ValidationError("Labels must be an object of string keys and string values.")
        if any("\x00" in key for key in value):
            raise serializers.ValidationError("Label keys cannot hold null characters.")
        return value


class RevokeSerializer(StrictInput, serializers.Serializer):
    reason = ReasonField()


class RevokedDeviceSerializer(DeviceSerializer):
    broker_reconciliation = serializers.ChoiceField(
        choices=["queued", "pending"],
        read_only=True,
        help_text="queued: a worker removes the device from the broker now. pending: the task queue refused the "
        "job; the revocation stands at the API, and the periodic broker reconciliation removes the device.",
    )

    class Meta(DeviceSerializer.Meta):
        fields = [*DeviceSerializer.Meta.fields, "broker_reconciliation"]
        read_only_fields = fields


class AssignModelSerializer(StrictInput, serializers.Serializer):
    model = serializers.CharField(max_length=63, help_text="Registry model name.")
    version = serializers.CharField(max_length=64)
    target = serializers.CharField(max_length=32, required=False, help_text="Bundle target; default cpu-fp32.")
    config = serializers.DictField(required=False, help_text="Runtime config merged over the desired one.")
    rollback = serializers.BooleanField(
        default=False,
        help_text="Send the device back to this version, older than the one it runs: the signed document "
        "names it as an explicit rollback. Without it, an older version is refused (409 rollback_required).",
    )

    def validate_config(self, value: dict[str, object]) -> dict[str, object]:
        # The device kernel's model decides what a desired document may carry, so an
        # operator hears about a bad key now rather than the device refusing it later.
        try:
            return protocol.RuntimeConfig.model_validate(value).model_dump(mode="json", exclude_none=True)
        except ValidationError as exc:
            raise serializers.ValidationError(
                [f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors()]
            ) from None


class ShadowSerializer(StrictInput, serializers.Serializer):
    model = serializers.CharField(max_length=63, help_text="Registry model name.")
    version = serializers.CharField(max_length=64, help_text="The candidate version to run in shadow.")
    target = serializers.CharField(max_length=32, required=False, help_text="Bundle target; default cpu-fp32.")


class EnrollmentTokenRequestSerializer(StrictInput, serializers.Serializer):
    ttl_hours = serializers.IntegerField(min_value=1, max_value=24 * 30, required=False)
    note = serializers.CharField(max_length=200, required=False, allow_blank=True)


class EnrollmentTokenSerializer(serializers.ModelSerializer):
    """An enrollment token as listed: never its secret."""

    site: serializers.SlugRelatedField[Site] = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    class Meta:
        model = EnrollmentToken
        fields = ["id", "site", "prefix", "note", "expires_at", "used_at", "revoked_at", "created_at"]
        read_only_fields = fields


class EnrollmentTokenCreatedSerializer(EnrollmentTokenSerializer):
    """The answer that issues a token: the only place its secret appears."""

    token = serializers.CharField(read_only=True, help_text="Shown once; only its hash is stored.")

    class Meta(EnrollmentTokenSerializer.Meta):
        fields = [*EnrollmentTokenSerializer.Meta.fields, "token"]
        read_only_fields = fields


class EnrollRequestSerializer(StrictInput, serializers.Serializer):
    token = serializers.CharField(max_length=200)
    name = serializers.RegexField(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$", max_length=100)
    site = serializers.CharField(max_length=63, required=False, help_text="Site slug the device expects to join.")
    hardware_profile = serializers.CharField(max_length=64, required=False, allow_blank=True)
    agent_version = serializers.CharField(max_length=64, required=False, allow_blank=True)
    labels = serializers.DictField(child=serializers.CharField(max_length=200), required=False)
