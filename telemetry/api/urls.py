from django.urls import path
from rest_framework.routers import DefaultRouter

from telemetry.api import views

router = DefaultRouter(trailing_slash=True)
router.register("alerts", views.AlertViewSet, basename="alert")

urlpatterns = [
    path("telemetry/", views.SeriesView.as_view(), name="telemetry-series"),
    path("devices/<str:device_id>/events/", views.DeviceEventViewSet.as_view({"get": "list"}), name="device-events"),
    *router.urls,
]
