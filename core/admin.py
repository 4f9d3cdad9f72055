from django.contrib import admin

from core.models import ApiToken, AuditLog


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("name", "prefix", "user", "scopes", "last_used_at", "revoked_at")
    exclude = ("key_hash",)


@admin.register(AuditLog)
class AuditLogAdmin(admin.ModelAdmin):
    list_display = ("created_at", "actor_label", "action", "target_type", "target_id", "reason")
    list_filter = ("action",)

    def has_change_permission(self, request, obj=None):
        return False
