from __future__ import annotations

from rest_framework.routers import DefaultRouter

from escalations.api import views

router = DefaultRouter(trailing_slash=True)
router.register("escalations", views.EscalationViewSet, basename="escalation")

urlpatterns = router.urls
