"""Dashboard page of the model registry: models, their versions, aliases, variants, signatures and history.

Everything on the page comes from a fixed number of queries, however many
models and versions the registry holds: models, versions (with who published
them), bundles, aliases, the signing keys named by the bundles, and the audit
entries of the versions and models shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.decorators import login_required
from django.db.models import Prefetch, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from core import access
from core.models import AuditLog
from registry.filters import ModelFilter
from registry.models import Alias, Bundle, Model, ModelVersion, SigningKey
from registry.variants import FP32

# The newest entries of a model's history the page shows (publishes, aliases moved, deprecations, INT8 builds).
HISTORY_SHOWN = 20
HISTORY_WORDS = {
    "model_version.publish": "published",
    "model_version.deprecate": "deprecated",
    "bundle.quantize": "INT8 variant built",
    "alias.set": "alias set",
    "alias.delete": "alias removed",
}
PROVENANCE = (("git_commit", "Commit"), ("ci_run", "CI run"), ("source", "Source"))


@dataclass(frozen=True)
class BundleView:
    bundle: Bundle
    key: SigningKey | None  # None: a key id this registry does not hold


@dataclass
class VersionView:
    version: ModelVersion
    bundles: list[BundleView]
    aliases: list[str]
    publisher: str
    provenance: list[tuple[str, str]]
    metrics: list[tuple[str, Any]]
    # Why it cannot be rolled out, or "" when it can.
    blocked: str = ""


@dataclass
class ModelView:
    model: Model
    versions: list[VersionView] = field(default_factory=list)
    history: list[tuple[AuditLog, str, str]] = field(default_factory=list)


@login_required
def models(request: HttpRequest) -> HttpResponse:
    versions = (
        ModelVersion.objects.select_related("published_by")
        .order_by("-sequence")
        .prefetch_related(Prefetch("bundles", queryset=Bundle.objects.order_by("target")))
    )
    queryset = Model.objects.order_by("name").prefetch_related(
        Prefetch("versions", queryset=versions),
        Prefetch("aliases", queryset=Alias.objects.select_related("version").order_by("name")),
    )
    filterset = ModelFilter(request.GET, queryset=queryset)
    valid = filterset.is_valid()
    found = list(filterset.qs) if valid else []
    context = {
        "filter": filterset,
        "models": _views(found, _keys(found)),
        "may_start": access.is_admin(request.user),
    }
    return render(request, "registry/models.html", context, status=200 if valid else 400)


def _views(found: list[Model], keys: dict[str, SigningKey]) -> list[ModelView]:
    version_pks = {str(v.pk): m for m in found for v in m.versions.all()}
    model_pks = {str(m.pk): m for m in found}
    entries = (
        AuditLog.objects.filter(
            Q(target_type="registry.modelversion", target_id__in=list(version_pks))
            | Q(target_type="registry.model", target_id__in=list(model_pks))
        ).order_by("-created_at", "-pk")
        if found
        else AuditLog.objects.none()
    )
    history: dict[int, list[AuditLog]] = {}
    publishers: dict[str, str] = {}
    for entry in entries:
        owner = version_pks.get(entry.target_id) if entry.target_type == "registry.modelversion" else None
        owner = owner or model_pks.get(entry.target_id)
        if owner is None:
            continue
        history.setdefault(owner.pk, []).append(entry)
        if entry.action == "model_version.publish":
            publishers[entry.target_id] = entry.actor_label
    views = []
    for model in found:
        names: dict[int, list[str]] = {}
        for alias in model.aliases.all():
            names.setdefault(alias.version_id, []).append(alias.name)
        by_pk = {v.pk: v for v in model.versions.all()}
        view = ModelView(model)
        for version in model.versions.all():
            view.versions.append(_version_view(version, names.get(version.pk, []), publishers, keys))
        for entry in history.get(model.pk, [])[:HISTORY_SHOWN]:
            about = by_pk.get(int(entry.target_id)) if entry.target_type == "registry.modelversion" else None
            view.history.append((entry, HISTORY_WORDS.get(entry.action, entry.action), _subject(entry, about)))
        views.append(view)
    return views


def _version_view(
    version: ModelVersion, aliases: list[str], publishers: dict[str, str], keys: dict[str, SigningKey]
) -> VersionView:
    bundles = [BundleView(bundle, keys.get(bundle.key_id)) for bundle in version.bundles.all()]
    if version.published_by is not None:
        publisher = version.published_by.get_username()
    else:
        publisher = publishers.get(str(version.pk), "")
    provenance = [(label, str(version.provenance[key])) for key, label in PROVENANCE if version.provenance.get(key)]
    metrics = sorted((version.metrics or {}).items()) if isinstance(version.metrics, dict) else []
    if version.is_deprecated:
        blocked = "deprecated"
    elif not any(b.bundle.target == FP32 for b in bundles):
        blocked = f"no {FP32} bundle"
    else:
        blocked = ""
    return VersionView(version, bundles, sorted(aliases), publisher, provenance, metrics, blocked)


def _subject(entry: AuditLog, version: ModelVersion | None) -> str:
    data = entry.data if isinstance(entry.data, dict) else {}
    if version is not None:
        return version.version
    if entry.action in ("alias.set", "alias.delete"):
        alias = data.get("alias", "")
        return f"{alias} → {data['version']}" if data.get("version") else str(alias)
    return ""


def _keys(found: list[Model]) -> dict[str, SigningKey]:
    """The signing keys that signed the bundles shown, by key id (one query)."""
    ids = {b.key_id for m in found for v in m.versions.all() for b in v.bundles.all()}
    return {key.key_id: key for key in SigningKey.objects.filter(key_id__in=ids)} if ids else {}
