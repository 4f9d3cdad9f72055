from __future__ import annotations

from typing import Any

from rest_framework import serializers

from core.api.serializers import ReasonField, StrictInput
from registry.models import Alias, Bundle, KeyringUpdate, Model, ModelVersion, SigningKey


class BundleSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="version.model.name", read_only=True)
    version = serializers.CharField(source="version.version", read_only=True)
    sequence = serializers.IntegerField(source="version.sequence", read_only=True)
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = Bundle
        fields = [
            "id",
            "model",
            "version",
            "sequence",
            "target",
            "sha256",
            "size",
            "manifest_sha256",
            "key_id",
            "metrics",
            "download_url",
            "created_at",
        ]
        read_only_fields = fields

    def get_download_url(self, bundle: Bundle) -> str:
        request = self.context.get("request")
        path = bundle.download_path()
        return request.build_absolute_uri(path) if request is not None else path


class ModelVersionSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model.name", read_only=True)
    published_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True
    )
    bundles = BundleSerializer(many=True, read_only=True)
    deprecated = serializers.BooleanField(source="is_deprecated", read_only=True)

    class Meta:
        model = ModelVersion
        fields = [
            "model",
            "version",
            "sequence",
            "content_digest",
            "labels",
            "input_spec",
            "output",
            "thresholds",
            "min_agent_version",
            "tolerance",
            "provenance",
            "metrics",
            "published_by",
            "created_at",
            "deprecated",
            "deprecated_at",
            "deprecation_reason",
            "bundles",
        ]
        read_only_fields = fields


class AliasSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model.name", read_only=True)
    version = serializers.CharField(source="version.version", read_only=True)
    updated_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = Alias
        fields = ["model", "name", "version", "updated_at", "updated_by"]
        read_only_fields = fields


class ModelSerializer(StrictInput, serializers.ModelSerializer):
    latest_version = serializers.SerializerMethodField()
    aliases = AliasSerializer(many=True, read_only=True)

    class Meta:
        model = Model
        fields = ["name", "task", "role", "labels", "description", "created_at", "latest_version", "aliases"]
        read_only_fields = ["name", "task", "labels", "created_at"]

    def get_latest_version(self, model: Model) -> str | None:
        version = model.versions.order_by("-sequence").first()
        return version.version if version else None


class PublishRequestSerializer(serializers.Serializer):
    """The multipart form; ``metadata`` is checked by registry.metadata.PublishMetadata."""

    model = serializers.FileField(help_text="The ONNX file.")
    metadata = serializers.CharField(help_text="JSON: version, task, labels, input, output, thresholds, ...")
    references = serializers.ListField(
        child=serializers.FileField(), required=False, help_text="Reference images, shipped in every bundle."
    )
    calibration = serializers.ListField(
        child=serializers.FileField(),
        required=False,
        help_text="More images for INT8 calibration and the fp32/int8 agreement figure; not shipped in bundles.",
    )


class DeprecateSerializer(StrictInput, serializers.Serializer):
    reason = ReasonField()


class AliasRequestSerializer(StrictInput, serializers.Serializer):
    version = serializers.CharField(max_length=64)


class SigningKeySerializer(serializers.ModelSerializer):
    class Meta:
        model = SigningKey
        fields = ["key_id", "public_key", "created_at", "retired_at"]
        read_only_fields = fields


class KeyringSerializer(serializers.Serializer):
    trust_store = serializers.ListField(child=serializers.DictField())
    # Declared fields leave the class namespace (DRF's metaclass), so this shadows no Serializer.update.
    update = serializers.DictField(allow_null=True, help_text="The latest signed keyring update.")  # type: ignore[assignment]

    @staticmethod
    def payload(trust_store: list[dict[str, Any]], latest: KeyringUpdate | None) -> dict[str, Any]:
        return {"trust_store": trust_store, "update": latest.as_update() if latest else None}
