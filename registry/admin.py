from __future__ import annotations

from django.contrib import admin

from registry.models import Alias, Bundle, KeyringUpdate, Model, ModelVersion, SigningKey


@admin.register(Model)
class ModelAdmin(admin.ModelAdmin):
    list_display = ["name", "task", "role", "created_at"]
    list_filter = ["task", "role"]


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["model", "version", "sequence", "published_by", "created_at", "deprecated_at"]
    list_filter = ["model"]
    readonly_fields = [f for f in ModelVersion.IMMUTABLE if f != "model_id"] + ["model"]


@admin.register(Bundle)
class BundleAdmin(admin.ModelAdmin):
    list_display = ["version", "target", "size", "key_id", "created_at"]
    readonly_fields = ["version", "target", "file", "sha256", "size", "manifest_sha256", "key_id", "metrics"]


@admin.register(Alias)
class AliasAdmin(admin.ModelAdmin):
    list_display = ["model", "name", "version", "updated_at"]


@admin.register(SigningKey)
class SigningKeyAdmin(admin.ModelAdmin):
    # Only public material is in the database; keys are made by `manage.py signing_key`.
    list_display = ["key_id", "created_at", "retired_at"]
    readonly_fields = ["key_id", "public_key", "created_at"]

    def has_add_permission(self, request: object) -> bool:
        return False


@admin.register(KeyringUpdate)
class KeyringUpdateAdmin(admin.ModelAdmin):
    list_display = ["sequence", "signed_by", "created_at"]
    readonly_fields = ["sequence", "document", "signature", "signed_by"]
