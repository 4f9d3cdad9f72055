"""Dashboard page of the model registry: models, versions, aliases and bundles."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db.models import Prefetch
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from registry.filters import ModelFilter
from registry.models import Alias, Bundle, Model, ModelVersion


@login_required
def models(request: HttpRequest) -> HttpResponse:
    versions = ModelVersion.objects.order_by("-sequence").prefetch_related(
        Prefetch("bundles", queryset=Bundle.objects.order_by("target"))
    )
    queryset = Model.objects.order_by("name").prefetch_related(
        Prefetch("versions", queryset=versions),
        Prefetch("aliases", queryset=Alias.objects.select_related("version").order_by("name")),
    )
    filterset = ModelFilter(request.GET, queryset=queryset)
    valid = filterset.is_valid()
    context = {"filter": filterset, "models": list(filterset.qs) if valid else []}
    return render(request, "registry/models.html", context, status=200 if valid else 400)
