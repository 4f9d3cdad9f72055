from __future__ import annotations

from django.urls import path
from rest_framework.routers import DefaultRouter

from registry.api import views

router = DefaultRouter(trailing_slash=True)
router.register("models", views.ModelViewSet, basename="model")
router.register(
    r"models/(?P<model_name>[a-z0-9][a-z0-9_-]{0,62})/versions", views.ModelVersionViewSet, basename="model-version"
)
router.register("bundles", views.BundleViewSet, basename="bundle")
router.register("signing-keys", views.SigningKeyViewSet, basename="signing-key")

urlpatterns = [
    path("bundles/<int:pk>/download", views.BundleDownloadView.as_view(), name="bundle-download"),
    path("keyring", views.KeyringView.as_view(), name="keyring"),
    *router.urls,
]
