from __future__ import annotations

from datetime import datetime

from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api.authentication import HasScope
from core.api.pagination import LimitOffsetPagination
from core.api.serializers import ErrorSerializer
from core.errors import ServiceError
from fleet.models import Device, Site
from telemetry import series
from telemetry.api.serializers import (
    AcknowledgeSerializer,
    AlertSerializer,
    DeviceEventSerializer,
    SeriesQuerySerializer,
    SeriesSerializer,
)
from telemetry.filters import AlertFilter, DeviceEventFilter
from telemetry.models import Alert, DeviceEvent


class SeriesView(APIView):
    """Time series of one device, site or model version, downsampled server-side to at most ``points``."""

    permission_classes = [HasScope]

    @extend_schema(
        parameters=[SeriesQuerySerializer],
        responses={
            200: SeriesSerializer,
            400: OpenApiResponse(ErrorSerializer, description="Bad range or scope"),
            404: OpenApiResponse(ErrorSerializer, description="No such device or site"),
        },
    )
    def get(self, request: Request) -> Response:
        query = SeriesQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        data = query.validated_data
        device_pk = None
        if data["scope"] == "device":
            device_pk = get_object_or_404(Device.objects.only("pk"), device_id=data["key"]).pk
        elif data["scope"] == "site":
            get_object_or_404(Site.objects.only("pk"), slug=data["key"])
        end: datetime = data.get("end") or timezone.now()
        result = series.build(
            series.SeriesRequest(
                scope=data["scope"],
                key=data["key"],
                start=data["start"],
                end=end,
                points=data["points"],
                resolution=data["resolution"],
                model=data.get("model"),
                device_pk=device_pk,
            )
        )
        return Response(SeriesSerializer(result).data)


class AlertViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Alerts from health, drift and peer rules; admins and operators of the device's site acknowledge.

    A token needs the ``fleet`` scope to acknowledge; ``Alert.acknowledge`` refuses an
    operator of another site (403 ``site_forbidden``).
    """

    serializer_class = AlertSerializer
    permission_classes = [HasScope]
    required_scopes = ("fleet",)
    operators_act = True
    parser_classes = [JSONParser]
    pagination_class = LimitOffsetPagination
    filterset_class = AlertFilter
    ordering_fields = ["since", "opened_at", "resolved_at"]
    queryset = Alert.objects.select_related("rule", "device", "device__site").exclude(state=Alert.State.PENDING)

    @extend_schema(request=AcknowledgeSerializer, responses={200: AlertSerializer, 409: ErrorSerializer})
    @action(detail=True, methods=["post"])
    def acknowledge(self, request: Request, pk: str | None = None) -> Response:
        alert = self.get_object()
        body = AcknowledgeSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        if not alert.acknowledge(request.user, note=body.validated_data["note"]):
            raise ServiceError(
                "alert_not_open",
                f"Only an open alert can be acknowledged; this one is {alert.state}.",
                status.HTTP_409_CONFLICT,
            )
        return Response(AlertSerializer(alert).data)


class DeviceEventViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """A device's events (model swaps, rejected desired states, throttling, ...), newest first.

    Devices publish them on MQTT ``events`` and the bridge stores every kind as
    it arrives, so the list holds whatever kinds the device's agent reports.
    Routed under ``/api/v1/devices/{device_id}/events/``: the fleet app, below
    telemetry, knows nothing of events.
    """

    serializer_class = DeviceEventSerializer
    permission_classes = [HasScope]
    pagination_class = LimitOffsetPagination
    filterset_class = DeviceEventFilter
    ordering_fields = ["at", "received_at"]
    ordering = ["-at", "-id"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation has no URL kwargs
            return DeviceEvent.objects.none()
        device = get_object_or_404(Device.objects.only("pk", "device_id"), device_id=self.kwargs["device_id"])
        return DeviceEvent.objects.filter(device=device).select_related("device")
