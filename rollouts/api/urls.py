from __future__ import annotations

from django.urls import path
from rest_framework.routers import DefaultRouter

from rollouts.api import views

router = DefaultRouter(trailing_slash=True)
router.register("rollouts", views.RolloutViewSet, basename="rollout")
router.register(r"rollouts/(?P<rollout_pk>[0-9]{1,18})/devices", views.RolloutDeviceViewSet, basename="rollout-device")
router.register("rollout-templates", views.RolloutTemplateViewSet, basename="rollout-template")

urlpatterns = [
    # Beside the fleet app's /sites/{slug}/ (fleet sits below rollouts and cannot reach this view).
    path("sites/<slug:slug>/rollback/", views.SiteRollbackView.as_view(), name="site-rollback"),
    path(
        "models/<str:name>/versions/<str:version>/rollback/",
        views.VersionRollbackView.as_view(),
        name="version-rollback",
    ),
    # Before the router's rollouts/{id}/, which would take "what-if" for an id.
    path("rollouts/what-if/", views.WhatIfView.as_view(), name="rollout-what-if"),
    *router.urls,
]
