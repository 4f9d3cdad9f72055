from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.http import HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api.authentication import HasScope, IsDevice
from core.api.pagination import LimitOffsetPagination
from core.api.serializers import ErrorSerializer
from core.errors import ServiceError
from core.models import AuditLog
from registry import services, variants
from registry.api.serializers import (
    AliasRequestSerializer,
    AliasSerializer,
    BundleSerializer,
    DeprecateSerializer,
    KeyringSerializer,
    ModelSerializer,
    ModelVersionSerializer,
    PublishRequestSerializer,
    SigningKeySerializer,
)
from registry.filters import BundleFilter, ModelFilter, ModelVersionFilter
from registry.inspection import PublishError
from registry.metadata import parse_metadata
from registry.models import Alias, Bundle, KeyringUpdate, Model, ModelVersion, SigningKey
from registry.trust import trust_store

log = logging.getLogger(__name__)


class ModelViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.UpdateModelMixin, viewsets.GenericViewSet):
    """Registered models. Models come into being with their first published version."""

    serializer_class = ModelSerializer
    permission_classes = [HasScope]
    required_scopes = ("publish",)
    parser_classes = [JSONParser]
    pagination_class = LimitOffsetPagination
    filterset_class = ModelFilter
    lookup_field = "name"
    ordering_fields = ["name", "created_at"]
    queryset = Model.objects.prefetch_related("aliases__version")

    @extend_schema(responses={200: AliasSerializer(many=True)})
    @action(detail=True, methods=["get"], filter_backends=[])
    def aliases(self, request: Request, name: str | None = None) -> Response:
        """The model's aliases by name, paged like every list."""
        model = self.get_object()
        page = self.paginate_queryset(model.aliases.select_related("model", "version", "updated_by").order_by("name"))
        return self.get_paginated_response(AliasSerializer(page, many=True).data)

    @extend_schema(
        methods=["PUT"], request=AliasRequestSerializer, responses={200: AliasSerializer, 400: ErrorSerializer}
    )
    @extend_schema(methods=["DELETE"], request=None, responses={204: None})
    @action(detail=True, methods=["put", "delete"], url_path=r"aliases/(?P<alias>[a-z0-9][a-z0-9_-]{0,62})")
    def alias(self, request: Request, name: str | None = None, alias: str = "") -> Response:
        """Point an alias (candidate, production, ...) at a published version, or remove it."""
        model = self.get_object()
        if request.method == "DELETE":
            deleted, _ = Alias.objects.filter(model=model, name=alias).delete()
            if deleted:
                AuditLog.record(actor=request.user, action="alias.delete", target=model, alias=alias)
            return Response(status=status.HTTP_204_NO_CONTENT)
        body = AliasRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        version = ModelVersion.objects.filter(model=model, version=body.validated_data["version"]).first()
        if version is None:
            message = f"{model.name} has no version {body.validated_data['version']}."
            raise ServiceError("unknown_version", message, 400, fields={"version": [message]})
        with transaction.atomic():
            row = Alias.objects.select_for_update().filter(model=model, name=alias).first() or Alias(
                model=model, name=alias
            )
            row.version, row.updated_by = version, request.user if request.user.is_authenticated else None
            try:
                row.full_clean()
            except DjangoValidationError as exc:
                fields = exc.message_dict if hasattr(exc, "error_dict") else None
                raise ServiceError("invalid_alias", " ".join(exc.messages), 400, fields=fields) from None
            row.save()
            AuditLog.record(actor=request.user, action="alias.set", target=model, alias=alias, version=version.version)
        return Response(AliasSerializer(row).data)


class ModelVersionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Versions of one model; POST publishes a new one (multipart, ``publish`` scope)."""

    serializer_class = ModelVersionSerializer
    permission_classes = [HasScope]
    required_scopes = ("publish",)
    filterset_class = ModelVersionFilter
    lookup_field = "version"
    lookup_value_regex = r"[0-9A-Za-z.+-]+"
    ordering_fields = ["sequence", "created_at"]
    # Publishing is a multipart upload (the ONNX file and its metadata); the actions read JSON.
    parser_classes = [MultiPartParser]
    pagination_class = LimitOffsetPagination

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation has no URL kwargs
            return ModelVersion.objects.none()
        return (
            ModelVersion.objects.filter(model__name=self.kwargs["model_name"])
            .select_related("model", "published_by")
            .prefetch_related("bundles__version__model")
        )

    @extend_schema(
        request={"multipart/form-data": PublishRequestSerializer},
        responses={
            200: OpenApiResponse(ModelVersionSerializer, description="Identical content was already published"),
            201: ModelVersionSerializer,
            400: ErrorSerializer,
            401: ErrorSerializer,
            403: ErrorSerializer,
            409: ErrorSerializer,
            413: ErrorSerializer,
        },
    )
    def create(self, request: Request, model_name: str) -> Response:
        # Refuse an oversize upload from its declared length, before Django
        # reads (and spools to disk) the body.
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        limit = settings.REGISTRY_MAX_UPLOAD_BYTES
        if length > limit:
            raise ServiceError("too_large", f"The upload is {length} bytes; the limit is {limit}.", 413)
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", model_name):
            raise ServiceError("bad_name", "Model names use lowercase letters, digits, dashes and underscores.")
        upload = request.FILES.get("model")
        if upload is None:
            message = "Send the ONNX file in the multipart field 'model'."
            raise ServiceError("missing_model", message, fields={"model": [message]})
        if upload.size is not None and upload.size > limit:
            raise ServiceError("too_large", f"The model is {upload.size} bytes; the limit is {limit}.", 413)
        raw = request.FILES.get("metadata")
        form = request.data if isinstance(request.data, dict) else {}
        text = raw.read() if raw is not None else form.get("metadata")
        if not text:
            message = "Send the metadata JSON in the field 'metadata'."
            raise ServiceError("missing_metadata", message, fields={"metadata": [message]})
        try:
            metadata = parse_metadata(text)
        except ValueError as exc:
            raise ServiceError("bad_metadata", str(exc), fields={"metadata": [str(exc)]}) from None
        images = [f.read() for f in request.FILES.getlist("references")]
        calibration = [f.read() for f in request.FILES.getlist("calibration")]
        try:
            published = services.publish_version(
                model_name=model_name,
                model_bytes=upload.read(),
                metadata=metadata,
                images=images,
                calibration=calibration,
                actor=request.user,
            )
        except PublishError as exc:
            log.info(
                "publish refused",
                extra={"model": model_name, "version": metadata.version, "code": exc.code, "detail": exc.detail},
            )
            raise
        version = self.get_queryset().get(pk=published.version.pk)
        data = ModelVersionSerializer(version, context=self.get_serializer_context()).data
        return Response(data, status=status.HTTP_201_CREATED if published.created else status.HTTP_200_OK)

    @extend_schema(request=DeprecateSerializer, responses={200: ModelVersionSerializer})
    @action(detail=True, methods=["post"], parser_classes=[JSONParser])
    def deprecate(self, request: Request, model_name: str, version: str | None = None) -> Response:
        """Mark a version deprecated: it stays downloadable (rollback) but cannot be aliased or rolled out."""
        row = self.get_object()
        body = DeprecateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        row.deprecate(body.validated_data["reason"])
        AuditLog.record(
            actor=request.user, action="model_version.deprecate", target=row, reason=body.validated_data["reason"]
        )
        return Response(ModelVersionSerializer(row, context=self.get_serializer_context()).data)

    @extend_schema(request=None, responses={202: ModelVersionSerializer})
    @action(detail=True, methods=["post"], parser_classes=[JSONParser])
    def quantize(self, request: Request, model_name: str, version: str | None = None) -> Response:
        """Build the cpu-int8 bundle (in a worker); idempotent."""
        row = self.get_object()
        if not row.bundles.filter(target=variants.INT8).exists():
            services.queue_int8(row)
        return Response(ModelVersionSerializer(row, context=self.get_serializer_context()).data, status=202)


class BundleViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = BundleSerializer
    permission_classes = [HasScope]
    pagination_class = LimitOffsetPagination
    filterset_class = BundleFilter
    ordering_fields = ["id", "target", "size", "created_at"]
    queryset = Bundle.objects.select_related("version__model")


class SigningKeyViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Public halves of the signing keys (the private halves never leave their files)."""

    serializer_class = SigningKeySerializer
    permission_classes = [HasScope]
    pagination_class = LimitOffsetPagination
    queryset = SigningKey.objects.all()
    ordering_fields = ["key_id", "created_at", "retired_at"]
    lookup_field = "key_id"


class DeviceOrReader(permissions.BasePermission):
    def has_permission(self, request: Any, view: Any) -> bool:
        return IsDevice().has_permission(request, view) or HasScope().has_permission(request, view)


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One ``bytes=`` range as (start, end inclusive); None when it cannot be satisfied.

    Multiple ranges are not served (a device resumes one download), so they are
    answered as unsatisfiable rather than with a multipart body.
    """
    match = _RANGE.match(header.strip())
    if match is None or size == 0:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":
        length = int(last)
        return (max(0, size - length), size - 1) if length > 0 else None
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        return None
    return start, end


class BundleDownloadView(APIView):
    """A signed bundle for a device: HTTP Range (resume), ETag, Content-Length, from storage."""

    permission_classes = [DeviceOrReader]

    @extend_schema(
        responses={
            (200, "application/gzip"): bytes,
            (206, "application/gzip"): bytes,
            304: None,
            401: ErrorSerializer,
            403: ErrorSerializer,
            404: ErrorSerializer,
            416: ErrorSerializer,
            503: ErrorSerializer,
        }
    )
    def get(self, request: Request, pk: int) -> HttpResponseBase:
        bundle = get_object_or_404(Bundle.objects.select_related("version__model"), pk=pk)
        etag = f'"{bundle.sha256}"'
        headers = {
            "ETag": etag,
            "Accept-Ranges": "bytes",
            "Cache-Control": "private, max-age=31536000, immutable",
            "X-Bundle-SHA256": bundle.sha256,
            "Content-Disposition": f'attachment; filename="{bundle.version.model.name}-{bundle.version.version}-'
            f'{bundle.target}.tar.gz"',
        }
        if etag in [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]:
            return HttpResponse(status=304, headers=headers)
        start, end, code = 0, bundle.size - 1, 200
        wanted = request.headers.get("Range")
        if_range = request.headers.get("If-Range")
        # If-Range with another validator: the file changed (it never does), send it whole.
        if wanted and (if_range is None or if_range.strip() == etag):
            span = parse_range(wanted, bundle.size)
            if span is None:
                raise ServiceError(
                    "range_not_satisfiable",
                    f"The range {wanted!r} is not within the bundle's {bundle.size} bytes.",
                    416,
                    headers={"Content-Range": f"bytes */{bundle.size}"},
                )
            (start, end), code = span, 206
            headers["Content-Range"] = f"bytes {start}-{end}/{bundle.size}"
        headers["Content-Length"] = str(end - start + 1)
        if request.method == "HEAD":
            return HttpResponse(status=code, headers=headers, content_type="application/gzip")
        try:
            # Opened before the status line goes out, so a missing file is a clear 503, not a cut body.
            handle = bundle.file.storage.open(bundle.file.name or "", "rb")
        except OSError:
            log.exception("bundle missing from storage", extra={"bundle": bundle.pk, "file": bundle.file.name})
            raise ServiceError(
                "bundle_unavailable",
                "The bundle cannot be read from storage; retry later.",
                503,
                headers={"Retry-After": "60"},
            ) from None
        return StreamingHttpResponse(
            _read_span(bundle, handle, start, end - start + 1),
            status=code,
            content_type="application/gzip",
            headers=headers,
        )


def _read_span(bundle: Bundle, handle: Any, start: int, length: int, chunk: int = 256 * 1024) -> Iterator[bytes]:
    with handle:
        handle.seek(start)
        while length > 0:
            data = handle.read(min(chunk, length))
            if not data:
                # The stored file is shorter than recorded: end the body short so
                # the client sees a truncated transfer instead of wrong bytes.
                log.error("bundle shorter than its recorded size", extra={"bundle": bundle.pk, "size": bundle.size})
                return
            length -= len(data)
            yield data


class KeyringView(APIView):
    """The current trust store and the latest signed keyring update."""

    permission_classes = [DeviceOrReader]

    @extend_schema(responses={200: KeyringSerializer})
    def get(self, request: Request) -> Response:
        return Response(KeyringSerializer.payload(trust_store(), KeyringUpdate.objects.first()))
