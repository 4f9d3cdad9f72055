"""The dashboard's pages, to be included at the site root."""

from __future__ import annotations

from django.urls import path

from dashboard import rollouts, sites, views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("devices/", views.device_list, name="device-list"),
    path("devices/<str:device_id>/", views.device_detail, name="device-page"),
    path("sites/<slug:slug>/", sites.site_detail, name="site-page"),
    path("rollouts/", rollouts.rollout_list, name="rollouts"),
    path("rollouts/new/", rollouts.rollout_new, name="rollout-new"),
    path("rollouts/<int:pk>/", rollouts.rollout_detail, name="rollout-page"),
    path("rollouts/<int:pk>/progress/", rollouts.rollout_progress, name="rollout-progress"),
    path("rollouts/<int:pk>/<str:verb>/", rollouts.rollout_action, name="rollout-action"),
]
