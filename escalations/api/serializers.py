from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.api.serializers import StrictInput
from escalations.models import Escalation, EscalationState
from fleet.models import Device, EscalationPrivacy, Site


# Inline enums: a named component would take the name "state" from the rollouts' states (and rename
# theirs) and give the sites' privacy choices a second name.
@extend_schema_field({"type": "string", "enum": EscalationState.values})
class StateField(serializers.CharField):
    pass


@extend_schema_field({"type": "string", "enum": EscalationPrivacy.values})
class PrivacyField(serializers.CharField):
    pass


class EscalationSerializer(serializers.ModelSerializer):
    """An escalated frame as operators (and the uploading device) see it; the pixels are at ``image/``."""

    device: serializers.SlugRelatedField[Device] = serializers.SlugRelatedField(slug_field="device_id", read_only=True)
    site: serializers.SlugRelatedField[Site] = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    has_image = serializers.BooleanField(read_only=True, help_text="Whether image/ serves the stored frame.")
    crop = serializers.ListField(
        child=serializers.IntegerField(), read_only=True, allow_null=True, help_text="[x, y, w, h] in the frame."
    )
    result = serializers.JSONField(read_only=True, help_text="The edge result as the device sent it.")
    state = StateField(
        read_only=True,
        help_text="awaiting_cloud, then answered (the cloud agrees) or review (they disagree), then reviewed.",
    )
    privacy = PrivacyField(read_only=True, help_text="The site's privacy mode when the frame was received.")
    reviewed_by = serializers.CharField(source="reviewed_by.username", read_only=True, allow_null=True, default=None)
    review_boxes = serializers.JSONField(read_only=True, help_text="[{label, box: [x, y, w, h]}] a reviewer drew.")

    class Meta:
        model = Escalation
        fields = [
            "id",
            "device",
            "site",
            "frame_id",
            "captured_at",
            "received_at",
            "model_name",
            "model_version",
            "threshold",
            "label",
            "confidence",
            "reason",
            "sample_rate",
            "result",
            "privacy",
            "crop",
            "state",
            "has_image",
            "content_type",
            "image_sha256",
            "image_bytes",
            "image_width",
            "image_height",
            "image_deleted_at",
            "cloud_label",
            "cloud_confidence",
            "cloud_model_version",
            "answered_at",
            "review_label",
            "review_boxes",
            "review_note",
            "reviewed_by",
            "reviewed_at",
        ]
        read_only_fields = fields


class EscalationUploadSerializer(serializers.Serializer):
    """The multipart body a device posts; only the schema reads this, ``escalations.metadata`` reads the body."""

    metadata = serializers.CharField(
        help_text="JSON: device_id, ts (ISO 8601 with offset), model_name, model_version, threshold, frame, "
        "result (the edge result, with label and confidence), and crop [x, y, w, h] on crop sites "
        "(docs/escalation.md)."
    )
    frame = serializers.FileField(required=False, help_text="The JPEG or PNG frame; left out on metadata-only sites.")


class ReviewBoxSerializer(StrictInput, serializers.Serializer):
    label = serializers.CharField(max_length=200)  # type: ignore[assignment]  # a field named as DRF's label
    box = serializers.ListField(child=serializers.FloatField(), min_length=4, max_length=4, help_text="[x, y, w, h]")


class ReviewSerializer(StrictInput, serializers.Serializer):
    """A person's decision on a frame: confirm an answer or correct it (boxes for a detector's frame)."""

    label = serializers.CharField(  # type: ignore[assignment]  # a field named as DRF's label
        max_length=200, help_text="One of the edge model version's labels."
    )
    note = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")
    boxes = serializers.ListField(child=ReviewBoxSerializer(), required=False, max_length=500)


class ExportQuerySerializer(serializers.Serializer):
    layout = serializers.ChoiceField(
        choices=["imagefolder", "coco"], default="imagefolder", help_text="imagefolder (classification) or coco."
    )
    site = serializers.SlugField(max_length=64, required=False)
    model_name = serializers.CharField(max_length=63, required=False)
    model_version = serializers.CharField(max_length=64, required=False)
    since = serializers.DateTimeField(required=False)
    until = serializers.DateTimeField(required=False)
    include_agreed = serializers.BooleanField(
        default=False, help_text="Also frames the cloud answered as the edge did (label source: cloud)."
    )


class AdvisorQuerySerializer(serializers.Serializer):
    model_name = serializers.CharField(max_length=63)
    model_version = serializers.CharField(max_length=64)
    site = serializers.SlugField(max_length=64, required=False)
    max_escalation_rate = serializers.FloatField(
        min_value=0.0, max_value=1.0, required=False, help_text="The upload budget: the share of frames."
    )
    min_accuracy = serializers.FloatField(min_value=0.0, max_value=1.0, required=False)


class AdvisorApplySerializer(StrictInput, serializers.Serializer):
    model_name = serializers.CharField(max_length=63)
    model_version = serializers.CharField(max_length=64)
    site = serializers.SlugField(max_length=64)
    threshold = serializers.FloatField(min_value=0.0, max_value=1.0)
    reason = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")
