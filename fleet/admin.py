from django.contrib import admin

from fleet.models import Device, EnrollmentToken, Site


@admin.register(Site)
class SiteAdmin(admin.ModelAdmin):
    list_display = ("slug", "name", "timezone", "maintenance_window_start", "maintenance_window_end", "created_at")
    search_fields = ("slug", "name")


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    list_display = ("name", "device_id", "site", "online", "last_seen", "agent_version", "revoked_at")
    list_filter = ("site", "online", "hardware_profile")
    search_fields = ("name", "device_id")
    readonly_fields = ("device_id", "reported", "last_heartbeat", "published_generation")


@admin.register(EnrollmentToken)
class EnrollmentTokenAdmin(admin.ModelAdmin):
    list_display = ("prefix", "site", "expires_at", "used_at", "revoked_at")
    exclude = ("token_hash",)
