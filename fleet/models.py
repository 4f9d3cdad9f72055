from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models, transaction
from django.utils import timezone

from core import tokens

slug_validator = RegexValidator(r"^[a-z0-9][a-z0-9-]{0,62}$", "Use lowercase letters, digits and dashes.")


class Site(models.Model):
    slug = models.CharField(max_length=63, unique=True, validators=[slug_validator])
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.name or self.slug


def new_device_id() -> str:
    return f"dev-{secrets.token_hex(8)}"


class Device(models.Model):
    """An edge device. ``device_id`` is its MQTT username and topic segment."""

    device_id = models.CharField(max_length=64, unique=True, default=new_device_id, editable=False)
    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="devices")
    name = models.CharField(max_length=100)
    hardware_profile = models.CharField(max_length=64, blank=True)
    labels = models.JSONField(default=dict, blank=True)
    agent_version = models.CharField(max_length=64, blank=True)
    online = models.BooleanField(default=False)
    last_seen = models.DateTimeField(null=True, blank=True)
    status_changed_at = models.DateTimeField(null=True, blank=True)
    reported = models.JSONField(default=dict, blank=True)
    last_heartbeat = models.JSONField(default=dict, blank=True)
    desired = models.JSONField(default=dict, blank=True)
    desired_generation = models.PositiveBigIntegerField(default=0)
    published_generation = models.PositiveBigIntegerField(default=0)
    # Highest contiguous telemetry seq stored; sent back on `ack` so the
    # device may delete those records from its outbox.
    telemetry_acked_seq = models.PositiveBigIntegerField(default=0)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["site__slug", "name"]
        constraints = [models.UniqueConstraint(fields=["site", "name"], name="device_name_unique_per_site")]

    def __str__(self) -> str:
        return f"{self.name} ({self.device_id})"

    def clean(self) -> None:
        if not isinstance(self.labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.labels.items()
        ):
            raise ValidationError({"labels": "Labels must be an object of string keys and string values."})

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def record_presence(self, online: bool, at: datetime) -> bool:
        """Apply a status message; returns whether the state changed.

        Retained and redelivered messages arrive out of order, so a message
        older than the last change is ignored.
        """
        with transaction.atomic():
            device = Device.objects.select_for_update().get(pk=self.pk)
            if device.status_changed_at and at < device.status_changed_at:
                return False
            changed = device.online != online
            device.online = online
            device.status_changed_at = at
            if online:
                device.last_seen = max(filter(None, [device.last_seen, at]))
            device.save(update_fields=["online", "status_changed_at", "last_seen"])
        self.online, self.status_changed_at, self.last_seen = device.online, at, device.last_seen
        return changed

    def set_desired(self, document: dict[str, Any]) -> int:
        """Replace the desired state and bump its generation (the bridge publishes it)."""
        with transaction.atomic():
            device = Device.objects.select_for_update().get(pk=self.pk)
            device.desired = document
            device.desired_generation += 1
            device.save(update_fields=["desired", "desired_generation"])
        self.desired, self.desired_generation = device.desired, device.desired_generation
        return device.desired_generation


class DeviceCredential(models.Model):
    """A device secret, stored hashed. A device may hold several during rotation."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="credentials")
    secret_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    @classmethod
    def issue(cls, device: Device) -> tuple[DeviceCredential, str]:
        secret = tokens.new_secret("efd")
        return cls.objects.create(device=device, secret_hash=tokens.digest(secret)), secret

    @classmethod
    def authenticate(cls, device_id: str, secret: str) -> Device | None:
        credential = (
            cls.objects.select_related("device", "device__site")
            .filter(secret_hash=tokens.digest(secret), revoked_at__isnull=True, device__revoked_at__isnull=True)
            .first()
        )
        if credential is None or credential.device.device_id != device_id:
            return None
        return credential.device


class EnrollmentTokenQuerySet(models.QuerySet["EnrollmentToken"]):
    def usable(self) -> EnrollmentTokenQuerySet:
        return self.filter(used_at__isnull=True, revoked_at__isnull=True, expires_at__gt=timezone.now())


class EnrollmentToken(models.Model):
    """One-time, expiring, per site. Only the hash is kept."""

    site = models.ForeignKey(Site, on_delete=models.CASCADE, related_name="enrollment_tokens")
    token_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=12)
    note = models.CharField(max_length=200, blank=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    used_by = models.ForeignKey(Device, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = EnrollmentTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    @classmethod
    def issue(
        cls, site: Site, *, ttl: timedelta | None = None, note: str = "", created_by: Any = None
    ) -> tuple[EnrollmentToken, str]:
        ttl = ttl or timedelta(hours=settings.ENROLLMENT_TOKEN_TTL_HOURS)
        token = tokens.new_secret("efe")
        row = cls.objects.create(
            site=site,
            token_hash=tokens.digest(token),
            prefix=token[:10],
            note=note,
            expires_at=timezone.now() + ttl,
            created_by=created_by,
        )
        return row, token
