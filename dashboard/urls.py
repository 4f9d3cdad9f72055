"""The dashboard's pages, to be included at the site root, and the fragments they poll (``dashboard.live``)."""

from __future__ import annotations

from django.urls import path

from dashboard import (
    audit,
    devices,
    escalation_advisor,
    escalation_export,
    escalations,
    live,
    rollouts,
    sites,
    tokens,
    users,
    views,
)

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("devices/", views.device_list, name="device-list"),
    path("devices/<str:device_id>/", devices.device_detail, name="device-page"),
    path("sites/<slug:slug>/", sites.site_detail, name="site-page"),
    path("rollouts/", rollouts.rollout_list, name="rollouts"),
    path("rollouts/new/", rollouts.rollout_new, name="rollout-new"),
    path("rollouts/<int:pk>/", rollouts.rollout_detail, name="rollout-page"),
    path("rollouts/<int:pk>/progress/", rollouts.rollout_progress, name="rollout-progress"),
    path("rollouts/<int:pk>/<str:verb>/", rollouts.rollout_action, name="rollout-action"),
    # "-page" names: the API's escalation-advisor and escalation-export would shadow the same names here.
    path("escalations/", escalations.queue_page, name="escalations"),
    path("escalations/advisor/", escalation_advisor.advisor_page, name="escalation-advisor-page"),
    path("escalations/export/", escalation_export.export_page, name="escalation-export-page"),
    path("escalations/<int:pk>/", escalations.frame_page, name="escalation-page"),
    path("audit/", audit.audit, name="audit"),
    path("tokens/", tokens.tokens, name="tokens"),
    path("tokens/api/<int:pk>/revoke/", tokens.revoke_api_token, name="tokens-revoke-api"),
    path("tokens/enrollment/<int:pk>/revoke/", tokens.revoke_enrollment_token, name="tokens-revoke-enrollment"),
    path("users/", users.users, name="users"),
    path("users/<int:pk>/role/", users.change_role, name="user-role"),
    path("live/fleet/", live.fleet, name="fleet-live"),
    path("live/sites/<slug:slug>/devices/", live.site_devices, name="site-live"),
    path("live/devices/<str:device_id>/", live.device_state, name="device-live"),
]
