from django.urls import path
from rest_framework.routers import DefaultRouter

from fleet.api import views

router = DefaultRouter(trailing_slash=True)
router.register("sites", views.SiteViewSet, basename="site")
router.register("devices", views.DeviceViewSet, basename="device")
router.register("enrollment-tokens", views.EnrollmentTokenViewSet, basename="enrollment-token")

urlpatterns = [
    path("enroll", views.EnrollView.as_view(), name="enroll"),
    path("device/self", views.DeviceSelfView.as_view(), name="device-self"),
    *router.urls,
]
