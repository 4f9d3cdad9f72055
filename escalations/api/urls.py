from __future__ import annotations

from django.urls import path
from rest_framework.routers import DefaultRouter

from escalations.api import views

router = DefaultRouter(trailing_slash=True)
router.register("escalations", views.EscalationViewSet, basename="escalation")

urlpatterns = [
    path("escalations/export/", views.ExportView.as_view(), name="escalation-export"),
    path("escalations/advisor/", views.AdvisorView.as_view(), name="escalation-advisor"),
    path("escalations/advisor/apply/", views.AdvisorApplyView.as_view(), name="escalation-advisor-apply"),
    path("escalations/<int:pk>/review/", views.ReviewView.as_view(), name="escalation-review"),
    *router.urls,
]
