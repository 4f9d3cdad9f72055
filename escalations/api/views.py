from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.http import FileResponse
from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from kombu.exceptions import OperationalError
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api.authentication import HasScope, IsDevice
from core.api.exceptions import PAYLOAD_TOO_LARGE
from core.api.pagination import LimitOffsetPagination
from core.api.serializers import ErrorSerializer
from core.errors import ServiceError
from escalations import advice, export, images, metadata, review, services, tasks
from escalations.api.serializers import (
    AdvisorApplySerializer,
    AdvisorQuerySerializer,
    EscalationSerializer,
    EscalationUploadSerializer,
    ExportQuerySerializer,
    ReviewSerializer,
)
from escalations.filters import EscalationFilter
from escalations.models import Escalation
from fleet.models import Device, Site

log = logging.getLogger(__name__)

PARTS = frozenset({"metadata", "frame"})


@extend_schema_view(
    list=extend_schema(description="Escalated frames, newest first; operators and scripts (any token scope)."),
)
class EscalationViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Escalated frames: devices post them (multipart), operators read them (docs/escalation.md)."""

    serializer_class = EscalationSerializer
    parser_classes = [MultiPartParser]
    pagination_class = LimitOffsetPagination
    filterset_class = EscalationFilter
    lookup_value_regex = "[0-9]{1,18}"
    ordering_fields = ["received_at", "captured_at", "confidence"]
    queryset = Escalation.objects.select_related("device", "site")

    def get_permissions(self) -> list[BasePermission]:
        # One path, two callers: devices post their own frames, operators and scripts read.
        if self.action == "create":
            return [IsDevice()]
        return [HasScope()]

    @extend_schema(
        request={"multipart/form-data": EscalationUploadSerializer},
        responses={
            200: OpenApiResponse(EscalationSerializer, description="This frame was already received; nothing stored."),
            201: EscalationSerializer,
            400: ErrorSerializer,
            401: ErrorSerializer,
            403: ErrorSerializer,
            413: ErrorSerializer,
            415: ErrorSerializer,
        },
        # Security requirement objects, as the schema writes them (the stubs say names).
        auth=[{"deviceBasic": []}],  # type: ignore[list-item]
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Upload one escalated frame (device credentials); idempotent per device and frame id."""
        try:
            return self._receive(request)
        except ServiceError as exc:
            device = getattr(request.auth, "device_id", None)
            log.info("escalation refused", extra={"device": device, "code": exc.code, "detail": exc.detail[:200]})
            raise

    def _receive(self, request: Request) -> Response:
        # From the declared length, before Django reads (and spools to disk) the body.
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        limit = settings.ESCALATION_MAX_BYTES
        if length > limit:
            raise ServiceError(PAYLOAD_TOO_LARGE, f"The upload is {length} bytes; the limit is {limit}.", 413)
        unknown = sorted((set(request.data) | set(request.FILES)) - PARTS)
        if unknown:
            message = "Send only the parts metadata and frame."
            raise ServiceError("invalid", message, 400, fields={name[:100]: [message] for name in unknown[:10]})
        parsed = metadata.parse(_metadata_text(request))
        device = request.auth
        if not isinstance(device, Device):  # IsDevice let only a device through
            raise ServiceError("permission_denied", "Only a device may upload escalated frames.", 403)
        frame = request.FILES.get("frame")
        services.admit(device, parsed, has_frame=frame is not None)
        image = None
        if frame is not None:
            if frame.size is not None and frame.size > limit:
                raise ServiceError(PAYLOAD_TOO_LARGE, f"The frame is over {limit} bytes.", 413)
            image = images.check(frame.read(limit + 1), max_side=settings.ESCALATION_MAX_IMAGE_SIDE)
        received = services.receive(device, parsed, image)
        if received.created and received.escalation.image_path:
            # A cloud worker picks it up now, with whatever else arrives within the batching delay. With the
            # task queue down the frame is stored all the same: the beat's next run answers it.
            try:
                tasks.answer_escalations.delay()
            except OperationalError as exc:
                log.warning("cloud worker not told of an escalation", extra={"error": str(exc)[:200]})
        answer = EscalationSerializer(self.get_queryset().get(pk=received.escalation.pk)).data
        return Response(answer, status=status.HTTP_201_CREATED if received.created else status.HTTP_200_OK)

    @extend_schema(
        responses={
            (200, "image/jpeg"): OpenApiTypes.BINARY,
            (200, "image/png"): OpenApiTypes.BINARY,
            404: ErrorSerializer,
            503: ErrorSerializer,
        }
    )
    @action(detail=True, methods=["get"], filter_backends=[])
    def image(self, request: Request, pk: str | None = None) -> FileResponse:
        """The stored frame's bytes; 404 ``no_image`` for a metadata-only frame or one removed by retention."""
        row = self.get_object()
        if not row.has_image:
            why = "was removed by retention" if row.image_deleted_at else "was stored without pixels"
            raise ServiceError("no_image", f"Escalation {row.pk} has no image: it {why}.", 404)
        try:
            handle = row.image_file().open("rb")
        except OSError:
            log.exception("escalated frame missing from storage", extra={"escalation": row.pk, "path": row.image_path})
            raise ServiceError(
                "image_unavailable", "The image cannot be read from storage.", 503, headers={"Retry-After": "60"}
            ) from None
        response = FileResponse(handle, content_type=row.content_type)
        response["ETag"] = f'"{row.image_sha256}"'
        response["Cache-Control"] = "private, no-store"
        response["X-Content-Type-Options"] = "nosniff"
        return response


def _metadata_text(request: Request) -> bytes | str:
    """The ``metadata`` part: a form field as the agent sends it, or a file part as ``curl -F metadata=@`` does."""
    upload = request.FILES.get("metadata")
    if upload is not None:
        return upload.read(metadata.MAX_METADATA_BYTES + 1)
    form = request.data if isinstance(request.data, Mapping) else {}
    value = form.get("metadata")
    if not isinstance(value, str) or not value:
        message = "Send the metadata JSON in the multipart part 'metadata'."
        raise ServiceError("invalid", message, 400, fields={"metadata": [message]})
    return value


class ReviewView(APIView):
    """Confirm or correct an escalated frame's label (docs/escalation.md, "Review"); audited."""

    permission_classes = [HasScope]
    required_scopes = ("fleet",)
    # An operator reviews their sites' frames (escalations.review checks it).
    operators_act = True
    parser_classes = [JSONParser]

    @extend_schema(
        request=ReviewSerializer,
        responses={200: EscalationSerializer, 400: ErrorSerializer, 404: ErrorSerializer, 409: ErrorSerializer},
    )
    def post(self, request: Request, pk: int) -> Response:
        row = get_object_or_404(Escalation, pk=pk)
        body = ReviewSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        done = review.review(row, label=data["label"], note=data["note"], boxes=data.get("boxes"), actor=request.user)
        return Response(EscalationSerializer(Escalation.objects.select_related("device", "site").get(pk=done.pk)).data)


class ExportView(APIView):
    """Reviewed frames as a dataset zip: ImageFolder or COCO, with a manifest of each label's source."""

    permission_classes = [HasScope]

    @extend_schema(
        parameters=[ExportQuerySerializer],
        responses={(200, "application/zip"): OpenApiTypes.BINARY, 400: ErrorSerializer, 404: ErrorSerializer},
    )
    def get(self, request: Request) -> FileResponse:
        # A plain dict: a query string's empty value is then a value to check (``until=`` is not a date-time),
        # not "left out" as DRF reads an HTML form.
        query = ExportQuerySerializer(data=dict(request.query_params.items()))
        query.is_valid(raise_exception=True)
        options = dict(query.validated_data)
        fmt = options.pop("layout")
        made = export.build(export.ExportFilter(**options), fmt=fmt)
        stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
        response = FileResponse(
            made.file, content_type="application/zip", as_attachment=True, filename=f"escalations-{fmt}-{stamp}.zip"
        )
        response["X-Edgefleet-Frames"] = str(made.frames)
        response["X-Edgefleet-Skipped"] = str(made.skipped)
        return response


class AdvisorView(APIView):
    """The threshold advisor: escalation rate against expected accuracy per threshold, and a pick."""

    permission_classes = [HasScope]

    @extend_schema(
        parameters=[AdvisorQuerySerializer],
        responses={200: OpenApiTypes.OBJECT, 400: ErrorSerializer, 404: ErrorSerializer},
    )
    def get(self, request: Request) -> Response:
        query = AdvisorQuerySerializer(data=dict(request.query_params.items()))
        query.is_valid(raise_exception=True)
        data = query.validated_data
        site = get_object_or_404(Site, slug=data["site"]) if data.get("site") else None
        answer = advice.advise(
            data["model_name"],
            data["model_version"],
            site=site,
            max_escalation_rate=data.get("max_escalation_rate"),
            min_accuracy=data.get("min_accuracy"),
        )
        return Response(answer)


class AdvisorApplyView(APIView):
    """Apply a threshold to a site's devices on a model version, through their signed desired state."""

    permission_classes = [HasScope]
    required_scopes = ("fleet",)
    # An operator applies a threshold to the sites they operate (escalations.advice checks it).
    operators_act = True
    parser_classes = [JSONParser]

    @extend_schema(
        request=AdvisorApplySerializer,
        responses={200: OpenApiTypes.OBJECT, 400: ErrorSerializer, 404: ErrorSerializer, 409: ErrorSerializer},
    )
    def post(self, request: Request) -> Response:
        body = AdvisorApplySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        site = get_object_or_404(Site, slug=data["site"])
        done = advice.apply(
            data["model_name"],
            data["model_version"],
            site=site,
            threshold=data["threshold"],
            actor=request.user,
            reason=data["reason"],
        )
        return Response(done)
