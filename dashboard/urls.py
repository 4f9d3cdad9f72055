"""The dashboard's pages, to be included at the site root."""

from __future__ import annotations

from django.urls import path

from dashboard import audit, sites, tokens, users, views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("devices/", views.device_list, name="device-list"),
    path("devices/<str:device_id>/", views.device_detail, name="device-page"),
    path("sites/<slug:slug>/", sites.site_detail, name="site-page"),
    path("audit/", audit.audit, name="audit"),
    path("tokens/", tokens.tokens, name="tokens"),
    path("tokens/api/<int:pk>/revoke/", tokens.revoke_api_token, name="tokens-revoke-api"),
    path("tokens/enrollment/<int:pk>/revoke/", tokens.revoke_enrollment_token, name="tokens-revoke-enrollment"),
    path("users/", users.users, name="users"),
    path("users/<int:pk>/role/", users.change_role, name="user-role"),
]
