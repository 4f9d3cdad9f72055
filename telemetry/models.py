from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, models, transaction
from django.utils import timezone

from core.models import AuditLog
from fleet import access


class VerbatimJSONField(models.JSONField):
    """JSON stored as written: PostgreSQL ``json``, not ``jsonb``.

    Raw telemetry is written once, read back whole by the rollups, and never
    queried by key, so nothing needs jsonb's decomposed binary form, while
    building it cost more than the rest of the row's insert (see
    docs/benchmarks.md). ``json`` still refuses anything that is not JSON.
    Other databases keep Django's own JSON column.
    """

    def db_type(self, connection: Any) -> str | None:
        return "json" if connection.vendor == "postgresql" else super().db_type(connection)

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        # psycopg parses ``json`` itself (it hands Django only jsonb as text).
        return value if isinstance(value, (dict, list)) else super().from_db_value(value, expression, connection)


class TelemetryRecord(models.Model):
    """One record from a device's outbox, stored once per (device, seq)."""

    # No index of its own: the unique (device, seq) index serves device lookups,
    # and one index fewer is one write fewer per stored record. No database
    # foreign key either: its per-row check at commit cost about 40 % of the
    # insert. The bridge stores records only for devices it has just looked
    # up, Django still cascades deletes, and raw retention removes anything
    # left by a device deleted mid-batch.
    device = models.ForeignKey(
        "fleet.Device", on_delete=models.CASCADE, related_name="telemetry", db_index=False, db_constraint=False
    )
    seq = models.PositiveBigIntegerField()
    kind = models.CharField(max_length=16)
    # The device's time, or the receiving time where the device's clock was
    # ahead of it (device_ts then keeps what the device said): a time from the
    # future would otherwise stay the device's newest heartbeat, and put its
    # windows in buckets nobody reads yet.
    recorded_at = models.DateTimeField()
    received_at = models.DateTimeField(auto_now_add=True)
    device_ts = models.DateTimeField(null=True, blank=True)
    data = VerbatimJSONField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["device", "seq"], name="telemetry_unique_device_seq")]
        indexes = [models.Index(fields=["device", "kind", "recorded_at"])]


class DeviceEvent(models.Model):
    device = models.ForeignKey("fleet.Device", on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=64)
    at = models.DateTimeField()
    received_at = models.DateTimeField(auto_now_add=True)
    data = models.JSONField(default=dict)
    # What identifies the event as the device sent it (kind, its own time, data): a redelivered copy
    # has the same digest and is stored once. Empty on rows stored before digests were kept.
    # A database default too: rows written by an older release during a rolling upgrade still insert.
    digest = models.CharField(max_length=64, blank=True, default="", db_default="")

    class Meta:
        ordering = ["-at"]
        indexes = [models.Index(fields=["device", "at"])]
        constraints = [
            models.UniqueConstraint(
                fields=["device", "digest"], condition=~models.Q(digest=""), name="device_event_once"
            )
        ]


class DeviceClock(models.Model):
    """A device whose clock was found ahead of the control plane's: what it said, and how often.

    Its times beyond ``protocol.MAX_AHEAD`` ahead are not trusted: the bridge
    stores those records and events at the receiving time and counts them
    here, so a wrong clock shows per device (dashboard, ``clock_skew`` alert)
    instead of freezing its heartbeat or stalling its outbox.
    """

    device = models.OneToOneField("fleet.Device", on_delete=models.CASCADE, related_name="clock")
    # The device's time minus the receiving time, as last observed (seconds, positive: ahead).
    offset_s = models.FloatField()
    device_time = models.DateTimeField()
    observed_at = models.DateTimeField()
    # Records and events stored at the receiving time instead of the device's.
    restamped = models.PositiveBigIntegerField(default=0)

    @classmethod
    def observe(cls, device_pk: int, device_time: datetime, received_at: datetime, restamped: int) -> None:
        """Count ``restamped`` messages of a device whose clock said ``device_time`` at ``received_at``."""
        fields = {
            "offset_s": (device_time - received_at).total_seconds(),
            "device_time": device_time,
            "observed_at": received_at,
        }
        rows = cls.objects.filter(device_id=device_pk)
        with transaction.atomic():
            if rows.update(restamped=models.F("restamped") + restamped, **fields):
                return
            try:
                with transaction.atomic():
                    cls.objects.create(device_id=device_pk, restamped=restamped, **fields)
            except IntegrityError:
                rows.update(restamped=models.F("restamped") + restamped, **fields)


class Quarantine(models.Model):
    """A stored row a periodic job could not process: recorded, counted and alerted on, then skipped.

    One row per (source, ref): seeing the same culprit again bumps ``occurrences``
    and ``last_at``. An operator reads it (admin, device page) and deletes it
    when dealt with; retention deletes it once not seen for as long as rollups are kept.
    """

    source = models.CharField(max_length=32)  # "rollups", "drift", "alerts", ...
    ref = models.CharField(max_length=200)  # e.g. "telemetry_record:1234" or "rule:cpu_throttled"
    device = models.ForeignKey("fleet.Device", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    reason = models.CharField(max_length=64)
    detail = models.TextField(blank=True)
    first_at = models.DateTimeField()
    last_at = models.DateTimeField()
    occurrences = models.PositiveBigIntegerField(default=1)

    class Meta:
        ordering = ["-last_at"]
        constraints = [models.UniqueConstraint(fields=["source", "ref"], name="quarantine_unique_ref")]
        indexes = [models.Index(fields=["device", "last_at"])]

    def __str__(self) -> str:
        return f"{self.source} {self.ref}: {self.reason}"

    @classmethod
    def note(cls, source: str, ref: str, reason: str, detail: str = "", device_id: int | None = None) -> None:
        """Record (or count again) a row ``source`` could not process, in a savepoint of its own."""
        now = timezone.now()
        fields = {"reason": reason[:64], "detail": detail[:2000], "last_at": now}
        rows = cls.objects.filter(source=source, ref=ref[:200])
        with transaction.atomic():
            if rows.update(occurrences=models.F("occurrences") + 1, **fields):
                return
            try:
                with transaction.atomic():
                    cls.objects.create(source=source, ref=ref[:200], device_id=device_id, first_at=now, **fields)
            except IntegrityError:
                # Another worker recorded it first.
                rows.update(occurrences=models.F("occurrences") + 1, **fields)


class Resolution(models.TextChoices):
    MINUTE = "1m", "minute"
    HOUR = "1h", "hour"


class Scope(models.TextChoices):
    DEVICE = "device", "device"
    SITE = "site", "site"
    FLEET = "fleet", "fleet"  # every device: the per-model-version view


class WindowRollup(models.Model):
    """Merged window summaries of one scope, model version and time bucket.

    Counts add up and histograms merge, so a coarser bucket or a wider scope is
    the sum of finer ones and percentiles are read off the merged counts. A
    device minute is rebuilt whole from raw records; the rows above it move by
    the difference between its new and old totals (``telemetry.rollups``).
    """

    resolution = models.CharField(max_length=2, choices=Resolution.choices)
    scope = models.CharField(max_length=6, choices=Scope.choices)
    # device_id, site slug, or "*" for the fleet.
    key = models.CharField(max_length=64)
    model_name = models.CharField(max_length=200, blank=True)
    model_version = models.CharField(max_length=64, blank=True)
    bucket = models.DateTimeField()
    devices = models.PositiveIntegerField(default=0)
    windows = models.PositiveIntegerField(default=0)
    fallback_windows = models.PositiveIntegerField(default=0)
    frames = models.PositiveBigIntegerField(default=0)
    dropped_frames = models.PositiveBigIntegerField(default=0)
    errors = models.PositiveBigIntegerField(default=0)
    escalations = models.PositiveBigIntegerField(default=0)
    latency = models.JSONField(default=dict)  # sparse {"bucket index": count}
    confidence = models.JSONField(default=list)  # dense CONFIDENCE_BINS counts
    classes = models.JSONField(default=dict)
    # A candidate run in shadow beside the model (Window.shadow): agreement slots and its latency.
    shadow_frames = models.PositiveBigIntegerField(default=0)
    shadow_errors = models.PositiveBigIntegerField(default=0)
    shadow_compared = models.PositiveBigIntegerField(default=0)
    shadow_agreed = models.PositiveBigIntegerField(default=0)
    shadow_latency = models.JSONField(default=dict)  # sparse {"bucket index": count}

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["resolution", "scope", "key", "model_name", "model_version", "bucket"],
                name="window_rollup_unique_bucket",
            )
        ]
        indexes = [models.Index(fields=["resolution", "scope", "key", "bucket"])]


class HeartbeatRollup(models.Model):
    """A device's heartbeats over one bucket: what health charts and rules read."""

    resolution = models.CharField(max_length=2, choices=Resolution.choices)
    device = models.ForeignKey("fleet.Device", on_delete=models.CASCADE, related_name="+")
    bucket = models.DateTimeField()
    heartbeats = models.PositiveIntegerField(default=0)
    cpu_percent_sum = models.FloatField(default=0.0)
    cpu_percent_max = models.FloatField(default=0.0)
    memory_percent_max = models.FloatField(default=0.0)
    disk_percent_max = models.FloatField(default=0.0)
    temperature_c_max = models.FloatField(null=True)
    cpu_freq_mhz_min = models.FloatField(null=True)
    cpu_freq_mhz_max = models.FloatField(null=True)
    outbox_depth_max = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["resolution", "device", "bucket"], name="heartbeat_rollup_unique_bucket")
        ]


class Cursor(models.Model):
    """How far a periodic job has got (e.g. the rollups, by received_at)."""

    name = models.CharField(max_length=64, unique=True)
    position = models.DateTimeField()


class BridgeStats(models.Model):
    """Counters one bridge process exports for /metrics (it runs apart from the web process)."""

    bridge_id = models.CharField(max_length=64, unique=True)
    counters = models.JSONField(default=dict)
    started_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        verbose_name_plural = "bridge stats"


class Baseline(models.Model):
    """The distribution a model version is compared with for drift."""

    class Source(models.TextChoices):
        FIELD = "field", "first hours in the field"
        REFERENCE = "reference", "reference distribution"

    model_name = models.CharField(max_length=200, blank=True)
    model_version = models.CharField(max_length=64)
    source = models.CharField(max_length=10, choices=Source.choices)
    confidence = models.JSONField(default=list)
    classes = models.JSONField(default=dict)
    frames = models.PositiveBigIntegerField(default=0)
    since = models.DateTimeField(null=True)
    until = models.DateTimeField(null=True)
    computed_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["model_name", "model_version"], name="baseline_unique_version")]


class AlertRule(models.Model):
    """Threshold and duration of one alert kind; defaults live in telemetry.alerts.DEFAULT_RULES."""

    class Severity(models.TextChoices):
        INFO = "info", "info"
        WARNING = "warning", "warning"
        CRITICAL = "critical", "critical"

    kind = models.CharField(max_length=32, unique=True)
    enabled = models.BooleanField(default=True)
    threshold = models.FloatField()
    duration_s = models.PositiveIntegerField(default=0)
    severity = models.CharField(max_length=8, choices=Severity.choices, default=Severity.WARNING)
    description = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["kind"]

    def __str__(self) -> str:
        return self.kind

    @property
    def condition(self) -> str:
        """The description with its ``N`` (the threshold's place) filled in: "Temperature at or above 80 degrees C"."""
        return _THRESHOLD_SLOT.sub(f"{self.threshold:g}", self.description)


# The threshold's place in a rule's description: an N standing alone ("above N", "below -N": -3.5, "N or more").
_THRESHOLD_SLOT = re.compile(r"(?<!\w)N(?!\w)")


class Alert(models.Model):
    """One episode of a rule's condition on one device: pending, open, acknowledged, resolved."""

    class State(models.TextChoices):
        # The condition holds but not yet for the rule's duration; nobody is told.
        PENDING = "pending", "pending"
        OPEN = "open", "open"
        ACKNOWLEDGED = "acknowledged", "acknowledged"
        RESOLVED = "resolved", "resolved"

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="alerts")
    device = models.ForeignKey("fleet.Device", on_delete=models.CASCADE, related_name="alerts")
    state = models.CharField(max_length=12, choices=State.choices, default=State.PENDING)
    since = models.DateTimeField()
    opened_at = models.DateTimeField(null=True, blank=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.CharField(max_length=200, blank=True)
    acknowledged_note = models.TextField(blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    value = models.FloatField(null=True)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-since"]
        constraints = [
            # At most one live episode per rule and device, even with two evaluators racing.
            models.UniqueConstraint(
                fields=["rule", "device"], condition=~models.Q(state="resolved"), name="alert_one_live_per_device"
            )
        ]
        indexes = [models.Index(fields=["state", "since"])]

    def __str__(self) -> str:
        return f"{self.rule.kind} on {self.device_id} ({self.state})"

    @property
    def is_live(self) -> bool:
        return self.state != self.State.RESOLVED

    def open(self, now: datetime) -> bool:
        """Pending long enough: the alert opens. Returns whether it changed."""
        return self._move({self.State.PENDING}, self.State.OPEN, opened_at=now)

    def acknowledge(self, actor: Any, note: str = "") -> bool:
        """Someone is on it: stops reminders, keeps it listed until the condition clears.

        Admins and operators of the device's site may (``fleet.access``); anyone else is refused with 403.
        """
        access.require_sites(actor, [self.device.site_id], "acknowledge alerts")
        label = getattr(actor, "username", None) or str(actor)
        changed = self._move(
            {self.State.OPEN},
            self.State.ACKNOWLEDGED,
            acknowledged_at=timezone.now(),
            acknowledged_by=label,
            acknowledged_note=note,
        )
        if changed:
            AuditLog.record(
                actor=actor,
                action="alert.acknowledge",
                target=self.device,
                reason=note,
                alert=self.pk,
                rule=self.rule.kind,
            )
        return changed

    def resolve(self, now: datetime) -> bool:
        """The condition cleared: resolved whatever its state (pending rows are just closed)."""
        return self._move(
            {self.State.PENDING, self.State.OPEN, self.State.ACKNOWLEDGED}, self.State.RESOLVED, resolved_at=now
        )

    def _move(self, sources: set[str], target: str, **fields: Any) -> bool:
        with transaction.atomic():
            row = Alert.objects.select_for_update().get(pk=self.pk)
            if row.state not in sources:
                self.state = row.state
                return False
            row.state = target
            for name, value in fields.items():
                setattr(row, name, value)
            row.save(update_fields=["state", *fields])
        self.state = target
        for name, value in fields.items():
            setattr(self, name, value)
        return True


class NotificationChannel(models.Model):
    """Where open and resolved alerts are sent: a signed webhook or e-mail."""

    class Kind(models.TextChoices):
        WEBHOOK = "webhook", "webhook"
        EMAIL = "email", "e-mail"

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    enabled = models.BooleanField(default=True)
    url = models.URLField(blank=True)
    secret = models.CharField(max_length=200, blank=True)
    recipients = models.JSONField(default=list, blank=True)
    min_severity = models.CharField(max_length=8, choices=AlertRule.Severity.choices, default="warning")

    def clean(self) -> None:
        if self.kind == self.Kind.WEBHOOK and not (self.url and self.secret):
            raise ValidationError({"url": "A webhook needs a URL and a secret to sign with."})
        if self.kind == self.Kind.EMAIL and not (
            isinstance(self.recipients, list) and self.recipients and all(isinstance(r, str) for r in self.recipients)
        ):
            raise ValidationError({"recipients": "An e-mail channel needs a list of addresses."})
