from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from escalations.models import Escalation


@admin.register(Escalation)
class EscalationAdmin(admin.ModelAdmin):
    """Read-only: frames arrive through the API with their files, and retention removes the files."""

    list_display = ["pk", "device", "site", "frame_id", "label", "confidence", "state", "privacy", "received_at"]
    list_filter = ["state", "privacy", "site"]
    search_fields = ["frame_id", "device__device_id", "label"]
    date_hierarchy = "received_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
