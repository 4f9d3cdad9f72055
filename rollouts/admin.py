from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from rollouts.models import GateResult, Rollout, RolloutStage, RolloutTemplate, SiteRollback


@admin.register(RolloutTemplate)
class RolloutTemplateAdmin(admin.ModelAdmin):
    list_display = ["name", "created_by", "updated_at"]
    search_fields = ["name"]


STAGE_FIELDS = ("index", "kind", "value", "requires_approval", "state", "verdict", "started_at", "finished_at")


class RolloutStageInline(admin.TabularInline):
    model = RolloutStage
    extra = 0
    can_delete = False
    fields = STAGE_FIELDS
    readonly_fields = STAGE_FIELDS


@admin.register(Rollout)
class RolloutAdmin(admin.ModelAdmin):
    """Read-only here: states move through the API's actions and the scheduler, which audit them."""

    list_display = ["pk", "version", "state", "current_stage", "created_by", "created_at"]
    list_filter = ["state"]
    inlines = [RolloutStageInline]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(GateResult)
class GateResultAdmin(admin.ModelAdmin):
    list_display = ["stage", "gate", "value", "threshold", "verdict", "evaluated_at"]
    list_filter = ["gate", "verdict"]


@admin.register(SiteRollback)
class SiteRollbackAdmin(admin.ModelAdmin):
    list_display = ["site", "model_name", "to_version", "devices", "actor_label", "created_at"]
