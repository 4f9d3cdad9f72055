"""The project's URLs with every dashboard page routed, for tests of pages config/urls.py does not route yet."""

from __future__ import annotations

from config.urls import urlpatterns as project
from dashboard.urls import urlpatterns as dashboard

urlpatterns = [*dashboard, *project]
