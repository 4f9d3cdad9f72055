"""Escalated frames: what a device was unsure of, what it decided, and (later) what the cloud model answers.

A row is written once per (device, frame) by ``escalations.services.receive``
together with its image file, if the site's privacy policy lets the frame keep
pixels at all; retention later removes the file and keeps the row.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.db import models

from fleet.models import Device, EscalationPrivacy, Site

FRAME_ID_MAX = 200
LABEL_MAX = 200


class EscalationState(models.TextChoices):
    AWAITING_CLOUD = "awaiting_cloud", "waiting for the cloud model"
    ANSWERED = "answered", "the cloud model agreed with the edge"
    REVIEW = "review", "edge and cloud disagree: waiting for a person"
    REVIEWED = "reviewed", "a person has labelled it"


class Escalation(models.Model):
    State = EscalationState

    device = models.ForeignKey(Device, on_delete=models.PROTECT, related_name="escalations")
    # The device's site when it uploaded: a device moved later keeps its past frames where they were taken.
    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="escalations")
    frame_id = models.CharField(max_length=FRAME_ID_MAX, help_text="The device's name for the frame.")
    captured_at = models.DateTimeField(help_text="When the device captured the frame (the device's clock).")
    model_name = models.CharField(max_length=63)
    model_version = models.CharField(max_length=64)
    threshold = models.FloatField(help_text="The confidence below which the device escalated.")
    result = models.JSONField(help_text="The edge result as the device sent it (bounded in size and depth).")
    label = models.CharField(max_length=LABEL_MAX, blank=True, help_text="The edge model's top-1 label.")
    confidence = models.FloatField(help_text="The edge model's top-1 confidence, 0 to 1.")
    reason = models.CharField(
        max_length=16,
        choices=[("unsure", "below the device's threshold"), ("fallback", "a sample of confident frames")],
        default="unsure",
    )
    sample_rate = models.FloatField(default=1.0, help_text="The chance a frame like it was sent: 1 when unsure.")
    privacy = models.CharField(
        max_length=16, choices=EscalationPrivacy.choices, help_text="The site's privacy mode when it was received."
    )
    crop = models.JSONField(null=True, blank=True, help_text="[x, y, w, h] of the crop in the frame (crop sites).")
    # Relative to MEDIA_ROOT; null when the site keeps no pixels. Kept after retention, with image_deleted_at set.
    image_path = models.CharField(max_length=255, null=True, blank=True)
    image_sha256 = models.CharField(max_length=64, blank=True)
    image_bytes = models.PositiveIntegerField(null=True, blank=True)
    image_width = models.PositiveIntegerField(null=True, blank=True)
    image_height = models.PositiveIntegerField(null=True, blank=True)
    content_type = models.CharField(max_length=32, blank=True)
    received_at = models.DateTimeField(db_index=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.AWAITING_CLOUD)
    # Filled by the cloud worker.
    cloud_label = models.CharField(max_length=LABEL_MAX, null=True, blank=True)
    cloud_confidence = models.FloatField(null=True, blank=True)
    cloud_model_version = models.CharField(max_length=64, null=True, blank=True)
    answered_at = models.DateTimeField(null=True, blank=True)
    # Set while a cloud worker holds the frame in a batch (escalations.answering); a stale claim is taken again.
    cloud_claimed_at = models.DateTimeField(null=True, blank=True)
    # A person's decision (escalations.review): the label, boxes for a detector's frame, who, when and why.
    review_label = models.CharField(max_length=LABEL_MAX, null=True, blank=True)
    review_boxes = models.JSONField(null=True, blank=True, help_text="[{label, box: [x, y, w, h]}] for detection.")
    review_note = models.TextField(blank=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    image_deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-received_at", "-pk"]
        constraints = [
            # A device retries an upload whose answer it did not get: the second one finds this row.
            models.UniqueConstraint(fields=["device", "frame_id"], name="escalation_device_frame_unique"),
            models.CheckConstraint(
                condition=models.Q(confidence__gte=0.0, confidence__lte=1.0), name="escalation_confidence_0_1"
            ),
            models.CheckConstraint(
                condition=models.Q(threshold__gte=0.0, threshold__lte=1.0), name="escalation_threshold_0_1"
            ),
            models.CheckConstraint(condition=models.Q(state__in=EscalationState.values), name="escalation_state_known"),
            models.CheckConstraint(
                condition=models.Q(sample_rate__gt=0.0, sample_rate__lte=1.0), name="escalation_sample_rate_0_1"
            ),
            models.CheckConstraint(
                condition=models.Q(privacy__in=EscalationPrivacy.values), name="escalation_privacy_known"
            ),
            # A site that keeps no pixels never has a file.
            models.CheckConstraint(
                condition=~models.Q(privacy=EscalationPrivacy.METADATA) | models.Q(image_path__isnull=True),
                name="escalation_metadata_has_no_image",
            ),
        ]
        indexes = [
            models.Index(fields=["site", "received_at"], name="escalation_site_received"),
            models.Index(fields=["state", "received_at"], name="escalation_state_received"),
            # Retention's scan: stored images not yet deleted.
            models.Index(
                fields=["site", "received_at"],
                name="escalation_image_live",
                condition=models.Q(image_path__isnull=False, image_deleted_at__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.device_id}/{self.frame_id}"

    @property
    def has_image(self) -> bool:
        return bool(self.image_path) and self.image_deleted_at is None

    def image_file(self) -> Path:
        if not self.image_path:
            raise ValueError("this escalation has no image")
        return Path(settings.MEDIA_ROOT) / self.image_path
