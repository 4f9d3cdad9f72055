from __future__ import annotations

from django.db import models


class TelemetryRecord(models.Model):
    """One record from a device's outbox, stored once per (device, seq)."""

    device = models.ForeignKey("fleet.Device", on_delete=models.CASCADE, related_name="telemetry")
    seq = models.PositiveBigIntegerField()
    kind = models.CharField(max_length=16)
    recorded_at = models.DateTimeField()
    received_at = models.DateTimeField(auto_now_add=True)
    data = models.JSONField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["device", "seq"], name="telemetry_unique_device_seq")]
        indexes = [models.Index(fields=["device", "kind", "recorded_at"])]


class DeviceEvent(models.Model):
    device = models.ForeignKey("fleet.Device", on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=64)
    at = models.DateTimeField()
    received_at = models.DateTimeField(auto_now_add=True)
    data = models.JSONField(default=dict)

    class Meta:
        ordering = ["-at"]
        indexes = [models.Index(fields=["device", "at"])]
