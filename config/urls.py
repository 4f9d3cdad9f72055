from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from core import health
from core.api import exceptions as api_errors
from registry import views as registry_views
from telemetry import views as telemetry_views

# Under /api/ these answer the API's error shape; elsewhere, Django's pages.
handler400 = api_errors.bad_request
handler403 = api_errors.permission_denied
handler404 = api_errors.page_not_found
handler500 = api_errors.server_error

urlpatterns = [
    path("", include("dashboard.urls")),
    path("alerts/", telemetry_views.alerts, name="alerts"),
    path("models/", registry_views.models, name="models"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(next_page="login"), name="logout"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("core.api.urls")),
    path("api/v1/", include("fleet.api.urls")),
    path("api/v1/", include("registry.api.urls")),
    path("api/v1/", include("telemetry.api.urls")),
    path("api/v1/", include("rollouts.api.urls")),
    path("api/v1/", include("escalations.api.urls")),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/v1/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", telemetry_views.metrics, name="metrics"),
]
