"""The dashboard's pages, to be included at the site root, and the fragments they poll (``dashboard.live``)."""

from __future__ import annotations

from django.urls import path

from dashboard import devices, live, sites, views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("devices/", views.device_list, name="device-list"),
    path("devices/<str:device_id>/", devices.device_detail, name="device-page"),
    path("sites/<slug:slug>/", sites.site_detail, name="site-page"),
    path("live/fleet/", live.fleet, name="fleet-live"),
    path("live/sites/<slug:slug>/devices/", live.site_devices, name="site-live"),
    path("live/devices/<str:device_id>/", live.device_state, name="device-live"),
]
