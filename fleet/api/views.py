from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Count, ProtectedError, Q
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import JSONParser
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from agent.kernel import protocol
from core.api.authentication import HasScope, IsAdmin, IsDevice
from core.api.pagination import LimitOffsetPagination
from core.api.serializers import ErrorSerializer
from core.errors import ServiceError
from core.models import AuditLog
from fleet import access, desired, services
from fleet.api.authentication import DeviceAuthentication
from fleet.api.serializers import (
    NAME_TAKEN,
    AssignModelSerializer,
    DeviceSerializer,
    EnrollmentTokenCreatedSerializer,
    EnrollmentTokenRequestSerializer,
    EnrollmentTokenSerializer,
    EnrollRequestSerializer,
    RevokedDeviceSerializer,
    RevokeSerializer,
    ShadowSerializer,
    SiteSerializer,
)
from fleet.broker import BrokerUnavailable
from fleet.filters import DeviceFilter, SiteFilter
from fleet.models import Device, EnrollmentToken, Site
from registry.models import ModelVersion

log = logging.getLogger(__name__)


@extend_schema_view(destroy=extend_schema(responses={204: None, 409: ErrorSerializer}))
class SiteViewSet(viewsets.ModelViewSet):
    serializer_class = SiteSerializer
    permission_classes = [HasScope]
    required_scopes = ("fleet",)
    # Operators change their own sites' settings; creating, deleting and enrolling are an admin's.
    operators_act = True
    parser_classes = [JSONParser]
    pagination_class = LimitOffsetPagination
    filterset_class = SiteFilter
    lookup_field = "slug"
    ordering_fields = ["slug", "name", "created_at"]

    def get_queryset(self):
        return Site.objects.annotate(
            device_count=Count("devices", filter=Q(devices__revoked_at__isnull=True)),
            online_count=Count("devices", filter=Q(devices__online=True, devices__revoked_at__isnull=True)),
        )

    def perform_create(self, serializer: Any) -> None:
        access.require_admin(self.request.user, "create sites")
        site = serializer.save()
        AuditLog.record(actor=self.request.user, action="site.create", target=site)
        # Answer with the counts too, as every other answer about a site does.
        serializer.instance = self.get_queryset().get(pk=site.pk)

    def perform_update(self, serializer: Any) -> None:
        access.require_sites(self.request.user, [serializer.instance.pk], "change this site's settings")
        before = serializer.instance.escalation_privacy
        with transaction.atomic():
            site = serializer.save()
            if site.escalation_privacy != before:
                # Devices enforce the policy too: each gets a new signed document that carries it.
                reissued = desired.reissue_site(site)
                AuditLog.record(
                    actor=self.request.user,
                    action="site.escalation_privacy",
                    target=site,
                    before=before,
                    after=site.escalation_privacy,
                    devices=reissued,
                )
        serializer.instance = self.get_queryset().get(pk=site.pk)

    def perform_destroy(self, instance: Site) -> None:
        access.require_admin(self.request.user, "delete sites")
        try:
            instance.delete()
        except ProtectedError:
            raise ServiceError(
                "site_has_devices", "The site still has devices; revoke and remove them first.", 409
            ) from None

    @extend_schema(request=EnrollmentTokenRequestSerializer, responses={201: EnrollmentTokenCreatedSerializer})
    @action(detail=True, methods=["post"], url_path="enrollment-tokens")
    def enrollment_tokens(self, request: Request, slug: str | None = None) -> Response:
        """Issue a one-time enrollment token for this site; the token is shown only here."""
        site = self.get_object()
        access.require_admin(request.user, "issue enrollment tokens")
        body = EnrollmentTokenRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        ttl = body.validated_data.get("ttl_hours")
        row, token = services.issue_enrollment_token(
            site,
            actor=request.user,
            ttl=timedelta(hours=ttl) if ttl else None,
            note=body.validated_data.get("note", ""),
        )
        data = EnrollmentTokenCreatedSerializer(row).data
        data["token"] = token
        return Response(data, status=status.HTTP_201_CREATED)


class EnrollmentTokenViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Enrollment tokens of every site (never their secrets), for admins; revoke one that leaked or is not needed."""

    serializer_class = EnrollmentTokenSerializer
    permission_classes = [IsAdmin]
    parser_classes = [JSONParser]
    pagination_class = LimitOffsetPagination
    queryset = EnrollmentToken.objects.select_related("site").order_by("-created_at", "-pk")
    ordering_fields = ["created_at", "expires_at"]

    @extend_schema(request=RevokeSerializer, responses={200: EnrollmentTokenSerializer, 409: ErrorSerializer})
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str | None = None) -> Response:
        """Refuse the token from now on; 409 when it was already used or revoked."""
        token = self.get_object()
        body = RevokeSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        row = services.revoke_enrollment_token(token, actor=request.user, reason=body.validated_data["reason"])
        return Response(EnrollmentTokenSerializer(row).data)


class DeviceViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.UpdateModelMixin, viewsets.GenericViewSet):
    serializer_class = DeviceSerializer
    permission_classes = [HasScope]
    required_scopes = ("fleet",)
    # Operators act on their sites' devices; each service checks the device's site (fleet.access).
    operators_act = True
    parser_classes = [JSONParser]
    pagination_class = LimitOffsetPagination
    filterset_class = DeviceFilter
    lookup_field = "device_id"
    ordering_fields = ["name", "last_seen", "created_at"]
    queryset = Device.objects.select_related("site")

    def perform_update(self, serializer: BaseSerializer[Device]) -> None:
        device = self.get_object()
        access.require_sites(self.request.user, [device.site_id], "change this device")
        try:
            with transaction.atomic():
                serializer.save()
        except IntegrityError:
            # Another request took the name between validation and the write.
            raise ServiceError("invalid", NAME_TAKEN, fields={"name": [NAME_TAKEN]}) from None

    @extend_schema(request=RevokeSerializer, responses={200: RevokedDeviceSerializer})
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, device_id: str | None = None) -> Response:
        """Revoke the device: the API refuses it at once, the broker once a worker has removed it."""
        device = self.get_object()
        body = RevokeSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        queued = services.revoke_device(device, actor=request.user, reason=body.validated_data["reason"])
        answer = dict(DeviceSerializer(device).data)
        answer["broker_reconciliation"] = "queued" if queued else "pending"
        return Response(answer)

    @extend_schema(
        request=AssignModelSerializer, responses={200: DeviceSerializer, 400: ErrorSerializer, 409: ErrorSerializer}
    )
    @action(detail=True, methods=["post"], url_path="assign-model")
    def assign_model(self, request: Request, device_id: str | None = None) -> Response:
        """Point the device at a model version's bundle; its agent downloads, verifies and installs it."""
        device = self.get_object()
        body = AssignModelSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        services.assign_model(
            device,
            published(data),
            actor=request.user,
            target=data.get("target"),
            config=data.get("config"),
            rollback=data["rollback"],
        )
        return Response(DeviceSerializer(device).data)

    @extend_schema(methods=["POST"], request=ShadowSerializer, responses={200: DeviceSerializer, 400: ErrorSerializer})
    @extend_schema(methods=["DELETE"], request=None, responses={200: DeviceSerializer})
    @action(detail=True, methods=["post", "delete"])
    def shadow(self, request: Request, device_id: str | None = None) -> Response:
        """Run a candidate version beside the device's model on the same frames, never acting on it (DELETE stops).

        The device reports how often the candidate agrees with the model in
        service, with its latency and confidence, in each telemetry window.
        """
        device = self.get_object()
        if request.method == "DELETE":
            services.assign_shadow(device, None, actor=request.user)
            return Response(DeviceSerializer(device).data)
        body = ShadowSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        services.assign_shadow(device, published(data), actor=request.user, target=data.get("target"))
        return Response(DeviceSerializer(device).data)


def published(data: dict[str, Any]) -> ModelVersion:
    """The published version a request names by ``model`` and ``version``, or a 400 naming the field."""
    version = ModelVersion.objects.filter(model__name=data["model"], version=data["version"]).first()
    if version is None:
        message = f"{data['model']} {data['version']} is not published."
        raise ServiceError("unknown_version", message, 400, fields={"version": [message]})
    return version


class EnrollView(APIView):
    """Exchange a one-time enrollment token for a device identity."""

    authentication_classes: list[type] = []
    permission_classes = [AllowAny]
    parser_classes = [JSONParser]
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "enroll"

    @extend_schema(
        request=EnrollRequestSerializer,
        responses={
            201: protocol.EnrollmentAnswer,
            400: ErrorSerializer,
            401: ErrorSerializer,
            403: ErrorSerializer,
            409: ErrorSerializer,
            410: ErrorSerializer,
            413: ErrorSerializer,
            415: ErrorSerializer,
            429: ErrorSerializer,
            503: ErrorSerializer,
        },
    )
    def post(self, request: Request) -> Response:
        body = EnrollRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        facts = {k: data[k] for k in ("hardware_profile", "agent_version", "labels") if k in data}
        try:
            result = services.enroll(token=data["token"], name=data["name"], site_slug=data.get("site"), facts=facts)
        except BrokerUnavailable as exc:
            # Nothing was committed and the token is still usable: the device retries later.
            log.warning("enrollment deferred, the broker did not take the credentials", extra={"error": str(exc)})
            raise ServiceError(
                "broker_unavailable",
                "The MQTT broker is unavailable; retry the enrollment later.",
                status.HTTP_503_SERVICE_UNAVAILABLE,
                headers={"Retry-After": "30"},
            ) from None
        return Response(result.answer().model_dump(mode="json"), status=status.HTTP_201_CREATED)


class DeviceSelfView(APIView):
    """What the control plane knows about the calling device."""

    authentication_classes = [DeviceAuthentication]
    permission_classes = [IsDevice]

    @extend_schema(responses={200: DeviceSerializer})
    def get(self, request: Request) -> Response:
        return Response(DeviceSerializer(request.auth).data)
