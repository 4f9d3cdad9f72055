from __future__ import annotations

from rest_framework.routers import DefaultRouter

from rollouts.api import views

router = DefaultRouter(trailing_slash=True)
router.register("rollouts", views.RolloutViewSet, basename="rollout")
router.register("rollout-templates", views.RolloutTemplateViewSet, basename="rollout-template")

urlpatterns = [*router.urls]
