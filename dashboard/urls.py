"""The dashboard's pages, to be included at the site root."""

from __future__ import annotations

from django.urls import path

from dashboard import sites, views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("devices/", views.device_list, name="device-list"),
    path("devices/<str:device_id>/", views.device_detail, name="device-page"),
    path("sites/<slug:slug>/", sites.site_detail, name="site-page"),
]
