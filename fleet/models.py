from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from functools import cache
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, available_timezones

import orjson
import psycopg
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import connection, models, transaction
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from core import tokens

slug_validator = RegexValidator(r"^[a-z0-9][a-z0-9-]{0,62}$", "Use lowercase letters, digits and dashes.")


@cache
def zone_names() -> frozenset[str]:
    """The IANA time zone names this machine knows.

    Not ``localtime`` (the server's own zone, which some systems list) nor a file path, which ZoneInfo also opens.
    """
    return frozenset(available_timezones()) - {"localtime", "posixrules", "Factory"}


class EscalationPrivacy(models.TextChoices):
    """What a site lets the cloud keep of an escalated frame (docs/escalation.md, "Privacy")."""

    FULL = "full", "the whole frame"
    CROP = "crop", "only a crop of the frame, with the box it was cut from"
    METADATA = "metadata", "no pixels: the edge result and its metadata only"


class Site(models.Model):
    slug = models.CharField(max_length=63, unique=True, validators=[slug_validator])
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    latency_budget_ms = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(600_000)],
        help_text="The p95 inference latency this site's use needs; rollout gates keep 20 % headroom below it.",
    )
    timezone = models.CharField(
        max_length=64, default="UTC", help_text="The site's IANA time zone: its maintenance window is in local time."
    )
    # Local wall-clock times; both empty: always open. An end before the start crosses midnight.
    maintenance_window_start = models.TimeField(null=True, blank=True)
    maintenance_window_end = models.TimeField(null=True, blank=True)
    escalation_privacy = models.CharField(
        max_length=16,
        choices=EscalationPrivacy.choices,
        default=EscalationPrivacy.FULL,
        help_text="What the control plane stores of this site's escalated frames: full, crop or metadata (no pixels).",
    )
    escalation_retention_days = models.PositiveIntegerField(
        default=30,
        validators=[MinValueValidator(1), MaxValueValidator(3650)],
        help_text="Days an escalated frame's pixels are kept; the record itself stays.",
    )
    # Users with the operator role who may act on this site (core.models.Role, fleet.access).
    operators = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="operated_sites")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(escalation_privacy__in=EscalationPrivacy.values),
                name="site_escalation_privacy_known",
            ),
            models.CheckConstraint(
                condition=models.Q(escalation_retention_days__gte=1, escalation_retention_days__lte=3650),
                name="site_escalation_retention_bounded",
            ),
            models.CheckConstraint(
                condition=(
                    models.Q(maintenance_window_start__isnull=True, maintenance_window_end__isnull=True)
                    | (
                        models.Q(maintenance_window_start__isnull=False, maintenance_window_end__isnull=False)
                        & ~models.Q(maintenance_window_start=models.F("maintenance_window_end"))
                    )
                ),
                name="site_maintenance_window_whole",
            ),
        ]

    def __str__(self) -> str:
        return self.name or self.slug

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if self.timezone not in zone_names():
            errors["timezone"] = "An IANA time zone name, e.g. Europe/Berlin or UTC."
        start, end = self.maintenance_window_start, self.maintenance_window_end
        if (start is None) != (end is None) or (start is not None and start == end):
            errors["maintenance_window"] = "A start and an end that differ, or neither (always open)."
        if errors:
            raise ValidationError(errors)

    def window_open(self, at: datetime) -> bool:
        """Whether the site's maintenance window is open at ``at`` (an aware time), in the site's local time."""
        start, end = self.maintenance_window_start, self.maintenance_window_end
        if start is None or end is None:
            return True
        local = at.astimezone(ZoneInfo(self.timezone)).time().replace(tzinfo=None)
        if start < end:
            return start <= local < end
        return local >= start or local < end  # crosses midnight


def new_device_id() -> str:
    return f"dev-{secrets.token_hex(8)}"


# --- liveness ---------------------------------------------------------------
#
# A device's liveness (online, last_seen, status_changed_at, last_heartbeat,
# agent_version, reported) is written only by the methods below: Device.record_presence,
# Device.record_seen, Device.record_reported, and DeviceQuerySet.touch_seen_bulk,
# lock_liveness/save_liveness (with the Device.apply_* rules the record_* methods
# use), mark_silent_offline and revoke. Bridges (several, side by side) and the offline
# sweep write the same rows at the same time; each method is safe against the
# others on its own, and every row lock is FOR NO KEY UPDATE: the telemetry a
# bridge inserts holds FOR KEY SHARE on its device's row (the foreign key
# check), and a FOR UPDATE lock would conflict with another bridge's insert
# for the same device and deadlock the two.


class Ingested(NamedTuple):
    """What one telemetry batch tells of one device, for ``touch_seen_bulk``."""

    pk: int
    # The new contiguous telemetry watermark (the seq the device is acknowledged).
    acked_seq: int
    # The batch's newest valid heartbeat, when it was taken, and its data.
    heartbeat_at: datetime | None = None
    heartbeat: Mapping[str, Any] | None = None


# One UPDATE for a batch of devices. The newer heartbeat wins, compared in
# the statement itself against the stored one's "ts" (a device that never
# sent one has -infinity), so two bridges holding different heartbeats of one
# device keep the newest whatever order they commit in.
_TOUCH_SEEN = (
    "UPDATE {table} d SET telemetry_acked_seq = v.seq, "
    "last_seen = GREATEST(d.last_seen, %b::timestamptz), "
    "last_heartbeat = CASE WHEN v.beat_at >= COALESCE((d.last_heartbeat->>'ts')::timestamptz, '-infinity') "
    "THEN v.beat ELSE d.last_heartbeat END, "
    "agent_version = CASE WHEN v.beat_at >= COALESCE((d.last_heartbeat->>'ts')::timestamptz, '-infinity') "
    "THEN v.version ELSE d.agent_version END "
    "FROM unnest(%b::bigint[], %b::bigint[], %b::text[]::jsonb[], %b::timestamptz[], %b::text[]) "
    "AS v(id, seq, beat, beat_at, version) WHERE d.id = v.id"
)


# What the bridge's messages other than telemetry change on a device (``lock_liveness``), and
# ``save_liveness``'s statement writing them back, one row per device.
_LIVENESS = ("online", "last_seen", "status_changed_at", "agent_version", "reported")
_SAVE_LIVENESS = (
    "UPDATE {table} d SET online = v.online, last_seen = v.last_seen, status_changed_at = v.changed, "
    "agent_version = v.version, reported = v.reported "
    "FROM unnest(%b::bigint[], %b::boolean[], %b::timestamptz[], %b::timestamptz[], %b::text[], %b::text[]::jsonb[]) "
    "AS v(id, online, last_seen, changed, version, reported) WHERE d.id = v.id"
)


def _heartbeat_document(at: datetime, data: Mapping[str, Any]) -> dict[str, Any]:
    return {**data, "ts": at.isoformat()}


class DeviceQuerySet(models.QuerySet["Device", "Device"]):
    def lock_watermarks(self, pks: Iterable[int]) -> dict[int, int]:
        """Lock these devices' rows for an ingest batch; returns each one's telemetry watermark.

        In pk order, so two bridges storing the same devices queue instead of
        deadlocking. Call it inside the transaction that ends with
        ``touch_seen_bulk``: the lock keeps the read watermark valid until then.
        """
        locked = self.select_for_update(no_key=True).filter(pk__in=pks).order_by("pk")
        return dict(locked.values_list("pk", "telemetry_acked_seq"))

    def touch_seen_bulk(self, batch: Sequence[Ingested], seen_at: datetime | None) -> None:
        """Save an ingest batch's watermarks, newest heartbeats and ``last_seen``: one UPDATE on PostgreSQL.

        One statement and one new row version per device and batch: the device
        rows are the hottest in the database, and every extra UPDATE leaves a
        dead tuple that the next batch's lock has to step over. ``last_seen``
        and the heartbeat only move forward, so a late batch changes neither.
        """
        if not batch:
            return
        if connection.vendor != "postgresql":
            self._touch_seen_portable(batch, seen_at)
            return
        beats = [(i.heartbeat_at, i.heartbeat) if i.heartbeat_at and i.heartbeat else None for i in batch]
        # A psycopg cursor for binary array parameters; its errors are raised as Django's.
        with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
            cursor.execute(
                _TOUCH_SEEN.format(table=self.model._meta.db_table),  # the table name is ours
                [
                    seen_at,
                    [i.pk for i in batch],
                    [i.acked_seq for i in batch],
                    [orjson.dumps(_heartbeat_document(*b)).decode() if b else None for b in beats],
                    [b[0] if b else None for b in beats],
                    [str(b[1]["agent_version"]) if b else None for b in beats],
                ],
            )

    def _touch_seen_portable(self, batch: Sequence[Ingested], seen_at: datetime | None) -> None:
        by_pk = {i.pk: i for i in batch}
        devices: list[Device] = list(
            self.select_for_update()
            .filter(pk__in=by_pk)
            .only("pk", "telemetry_acked_seq", "last_seen", "last_heartbeat", "agent_version")
        )
        for device in devices:
            item = by_pk[device.pk]
            device.telemetry_acked_seq = item.acked_seq
            device.last_seen = max(filter(None, [device.last_seen, seen_at]), default=None)
            if item.heartbeat_at and item.heartbeat and item.heartbeat_at >= device.heartbeat_at:
                device.last_heartbeat = _heartbeat_document(item.heartbeat_at, item.heartbeat)
                device.agent_version = str(item.heartbeat["agent_version"])
        Device.objects.bulk_update(devices, ["telemetry_acked_seq", "last_seen", "last_heartbeat", "agent_version"])

    def lock_liveness(self, pks: Iterable[int]) -> dict[int, Device]:
        """Lock these devices' rows in pk order and read their liveness, for ``Device.apply_*`` and ``save_liveness``.

        In pk order and in one statement, as ``lock_watermarks``: two bridges
        applying the same devices' messages queue instead of deadlocking. Call
        it inside the transaction that ends with ``save_liveness``.
        """
        locked = self.select_for_update(no_key=True).filter(pk__in=pks).order_by("pk").only("pk", *_LIVENESS)
        return {device.pk: device for device in locked}

    def save_liveness(self, devices: Iterable[Device]) -> None:
        """Write back what ``Device.apply_*`` changed on rows ``lock_liveness`` locked: one UPDATE on PostgreSQL."""
        rows = list(devices)
        if not rows:
            return
        if connection.vendor != "postgresql":
            Device.objects.bulk_update(rows, list(_LIVENESS))
            return
        # Django's bulk_update builds a CASE per row and field: most of a batch's time. unnest does not.
        with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
            cursor.execute(
                _SAVE_LIVENESS.format(table=self.model._meta.db_table),  # the table name is ours
                [
                    [d.pk for d in rows],
                    [d.online for d in rows],
                    [d.last_seen for d in rows],
                    [d.status_changed_at for d in rows],
                    [d.agent_version for d in rows],
                    [orjson.dumps(d.reported).decode() for d in rows],
                ],
            )

    def mark_silent_offline(self, cutoff: datetime, at: datetime) -> int:
        """Mark offline every online device not heard from since ``cutoff``; returns how many.

        A device whose row a bridge has locked is being heard from right now:
        it is skipped, not waited for. The rest are locked in pk order, as the
        bridges lock them, so the sweep never deadlocks a bridge; a device it
        marks offline while a message of it is in flight comes back online
        with its next message (``record_presence`` orders by time).
        """
        with transaction.atomic():
            silent = list(
                self.select_for_update(no_key=True, skip_locked=True)
                .filter(online=True, last_seen__lt=cutoff)
                .order_by("pk")
                .values_list("pk", flat=True)
            )
            if silent:
                self.filter(pk__in=silent).update(online=False, status_changed_at=at)
        return len(silent)

    def revoke(self, at: datetime) -> int:
        """Revoke those of these devices not revoked yet: refused from ``at`` on, and offline; returns how many."""
        return self.filter(revoked_at__isnull=True).update(revoked_at=at, online=False)


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
    # What the device should run ({model, config, rollback_to}), and the signed document
    # built from it for ``desired_generation`` (fleet.desired), which the bridge publishes.
    desired = models.JSONField(default=dict, blank=True)
    desired_generation = models.PositiveBigIntegerField(default=0)
    desired_document = models.JSONField(default=dict, blank=True, editable=False)
    desired_expires_at = models.DateTimeField(null=True, blank=True, db_index=True, editable=False)
    published_generation = models.PositiveBigIntegerField(default=0)
    # Highest contiguous telemetry seq stored; sent back on `ack` so the
    # device may delete those records from its outbox.
    telemetry_acked_seq = models.PositiveBigIntegerField(default=0)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = DeviceQuerySet.as_manager()

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

    @property
    def heartbeat_at(self) -> datetime:
        """When the newest stored heartbeat was taken (the earliest time if none was)."""
        ts = self.last_heartbeat.get("ts") if isinstance(self.last_heartbeat, dict) else None
        return datetime.fromisoformat(ts) if ts else datetime.min.replace(tzinfo=dt_timezone.utc)

    def record_presence(self, online: bool, at: datetime, *, agent_version: str | None = None) -> bool:
        """Apply a status message; returns whether the state changed.

        Retained and redelivered messages arrive out of order, so a message
        older than the last change is ignored, and so is the agent version it
        names (an older message names an older version).
        """
        with transaction.atomic():
            device = Device.objects.select_for_update(no_key=True).get(pk=self.pk)
            changed = device.apply_status(online, at, agent_version=agent_version)
            if changed is None:
                return False
            fields = ["online", "status_changed_at", "last_seen"]
            if agent_version:
                fields.append("agent_version")
            device.save(update_fields=fields)
        self.online, self.status_changed_at, self.last_seen = device.online, at, device.last_seen
        if agent_version:
            self.agent_version = agent_version
        return changed

    def apply_status(self, online: bool, at: datetime, *, agent_version: str | None = None) -> bool | None:
        """``record_presence``'s rule on this instance (its row locked): whether the state changed, None if ignored."""
        if self.status_changed_at and at < self.status_changed_at:
            return None
        changed = self.online != online
        self.online = online
        self.status_changed_at = at
        if online:
            self.last_seen = max(filter(None, [self.last_seen, at]))
        if agent_version:
            self.agent_version = agent_version
        return changed

    def apply_seen(self, at: datetime) -> bool:
        """``record_seen``'s rule on this instance (its row locked); returns whether it brought the device online."""
        self.last_seen = max(filter(None, [self.last_seen, at]))
        return not self.online and bool(self.apply_status(True, at))

    def apply_reported(self, reported: dict[str, Any], agent_version: str) -> bool:
        """``record_reported``'s rule on this instance (its row locked): whether the report was newer and kept."""
        if _report_order(self.reported) > _report_order(reported):
            return False
        self.reported, self.agent_version = reported, agent_version
        return True

    def record_seen(self, at: datetime) -> None:
        """Anything a device sends proves it alive: ``last_seen`` moves forward, an offline device comes online.

        One conditional UPDATE, so a bridge holding an older message never
        moves ``last_seen`` back past what another bridge stored.
        """
        Device.objects.filter(pk=self.pk).update(last_seen=Coalesce(Greatest("last_seen", models.Value(at)), at))
        if not self.online:
            self.record_presence(True, at)

    def record_reported(self, reported: dict[str, Any], agent_version: str) -> bool:
        """Store what the device reports it runs, unless a newer report is stored; returns whether it was.

        MQTT redelivers and reorders across reconnects, so a report is newer when it names a later
        generation of ``desired``, or the same generation at a later time (its ``ts``).
        """
        with transaction.atomic():
            locked = Device.objects.select_for_update(no_key=True).only("pk", "reported", "agent_version")
            device = locked.get(pk=self.pk)
            if not device.apply_reported(reported, agent_version):
                self.reported = device.reported
                return False
            Device.objects.filter(pk=self.pk).update(reported=reported, agent_version=agent_version)
        self.reported, self.agent_version = reported, agent_version
        return True


_NO_TIME = datetime.min.replace(tzinfo=dt_timezone.utc)


def _report_order(reported: Any) -> tuple[int, datetime]:
    """(generation, ts) of a report, to order reports; what a report lacks sorts first."""
    if not isinstance(reported, dict):
        return (-1, _NO_TIME)
    generation = reported.get("generation")
    try:
        stamp = datetime.fromisoformat(str(reported.get("ts")).replace("Z", "+00:00"))
    except ValueError:
        stamp = _NO_TIME
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt_timezone.utc)
    return (generation if isinstance(generation, int) and not isinstance(generation, bool) else -1, stamp)


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


class DeviceCommand(models.Model):
    """A command queued for a device (``fleet.commands``); the bridge publishes it on the device's ``commands``."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="commands")
    command_id = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=32)
    args = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)
    published_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True, help_text="Not sent: too old, or not sendable.")

    class Meta:
        ordering = ["created_at", "pk"]
        indexes = [
            # The bridge's poll: what is still to be sent, oldest first.
            models.Index(
                fields=["created_at"],
                name="command_pending",
                condition=models.Q(published_at__isnull=True, expired_at__isnull=True),
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} {self.command_id} for {self.device_id}"


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
