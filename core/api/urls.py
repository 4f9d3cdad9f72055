from rest_framework.routers import SimpleRouter

from core.api import views

# SimpleRouter: the fleet router already answers the API root at /api/v1/.
router = SimpleRouter(trailing_slash=True)
router.register("tokens", views.ApiTokenViewSet, basename="api-token")

urlpatterns = router.urls
