from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, extend_schema_view
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
from core.models import AuditLog
from fleet.models import Site
from registry.models import ModelVersion
from rollouts import rollback, services, whatif
from rollouts.api.serializers import (
    TEMPLATE_NAME,
    ActionSerializer,
    RolloutCreateSerializer,
    RolloutDetailSerializer,
    RolloutDeviceSerializer,
    RolloutSerializer,
    RolloutTemplateSerializer,
    SiteRollbackRequestSerializer,
    SiteRollbackSerializer,
    VersionRollbackSerializer,
    WhatIfRequestSerializer,
    WhatIfSerializer,
)
from rollouts.filters import RolloutDeviceFilter
from rollouts.models import Rollout, RolloutDevice, RolloutTemplate

ACTION_ANSWERS = {200: RolloutDetailSerializer, 409: ErrorSerializer}


class RolloutTemplateViewSet(viewsets.ModelViewSet):
    """Named plans with gate defaults; a rollout is started from one by name."""

    serializer_class = RolloutTemplateSerializer
    permission_classes = [HasScope]
    required_scopes = ("rollout",)
    parser_classes = [JSONParser]
    pagination_class = LimitOffsetPagination
    lookup_field = "name"
    lookup_value_regex = TEMPLATE_NAME
    ordering_fields = ["name", "created_at"]
    queryset = RolloutTemplate.objects.select_related("created_by")

    def perform_create(self, serializer: Any) -> None:
        user = self.request.user if self.request.user.is_authenticated else None
        template = serializer.save(created_by=user if hasattr(user, "pk") else None)
        AuditLog.record(actor=self.request.user, action="rollout_template.create", target=template)

    def perform_update(self, serializer: Any) -> None:
        template = serializer.save()
        AuditLog.record(actor=self.request.user, action="rollout_template.update", target=template)

    def perform_destroy(self, instance: RolloutTemplate) -> None:
        AuditLog.record(actor=self.request.user, action="rollout_template.delete", target=instance, name=instance.name)
        # Rollouts keep their own copy of the plan; theirs only loses the name (SET_NULL).
        instance.delete()


@extend_schema_view(
    create=extend_schema(
        request=RolloutCreateSerializer,
        responses={201: RolloutDetailSerializer, 400: ErrorSerializer, 409: ErrorSerializer},
    ),
    retrieve=extend_schema(responses={200: RolloutDetailSerializer}),
)
class RolloutViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet
):
    """Staged rollouts of a model version; the scheduler's tick moves them (docs/rollouts.md)."""

    permission_classes = [HasScope]
    required_scopes = ("rollout",)
    # Operators act on rollouts within their sites; rollouts.services checks every site a rollout touches.
    operators_act = True
    parser_classes = [JSONParser]
    pagination_class = LimitOffsetPagination
    lookup_value_regex = "[0-9]{1,18}"
    ordering_fields = ["created_at", "state"]
    queryset = Rollout.objects.select_related("version__model", "template", "created_by")

    def get_serializer_class(self) -> Any:
        if self.action == "list":
            return RolloutSerializer
        if self.action == "create":
            return RolloutCreateSerializer
        if self.action in ("pause", "resume", "abort", "approve"):
            return ActionSerializer
        return RolloutDetailSerializer

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        body = RolloutCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        version = (
            ModelVersion.objects.select_related("model")
            .filter(model__name=data["model"], version=data["version"])
            .first()
        )
        if version is None:
            message = f"{data['model']} {data['version']} is not published."
            raise ServiceError("unknown_version", message, 400, fields={"version": [message]})
        template = None
        if "template" in data:
            template = RolloutTemplate.objects.filter(name=data["template"]).first()
            if template is None:
                message = f"No rollout template is named {data['template']!r}."
                raise ServiceError("unknown_template", message, 400, fields={"template": [message]})
        rollout = services.create(
            version=version,
            target=data["target"],
            plan=data.get("plan"),
            template=template,
            gates=data.get("gates"),
            actor=request.user,
            reason=data.get("reason", ""),
        )
        return Response(
            RolloutDetailSerializer(self.get_queryset().get(pk=rollout.pk)).data, status=status.HTTP_201_CREATED
        )

    def _act(self, request: Request, verb: Any) -> Response:
        rollout = self.get_object()
        body = ActionSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        verb(rollout, actor=request.user, reason=body.validated_data.get("reason", ""))
        return Response(RolloutDetailSerializer(self.get_queryset().get(pk=rollout.pk)).data)

    @extend_schema(request=ActionSerializer, responses=ACTION_ANSWERS)
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: str | None = None) -> Response:
        """Hold the rollout where it is; nothing more is sent until it is resumed."""
        return self._act(request, services.pause)

    @extend_schema(request=ActionSerializer, responses=ACTION_ANSWERS)
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str | None = None) -> Response:
        """Let a paused rollout go on from where it was."""
        return self._act(request, services.resume)

    @extend_schema(request=ActionSerializer, responses=ACTION_ANSWERS)
    @action(detail=True, methods=["post"])
    def abort(self, request: Request, pk: str | None = None) -> Response:
        """Stop for good; devices keep what they were sent. Aborting an aborted rollout changes nothing."""
        return self._act(request, services.abort)

    @extend_schema(request=ActionSerializer, responses=ACTION_ANSWERS)
    @action(detail=True, methods=["post"])
    def approve(self, request: Request, pk: str | None = None) -> Response:
        """Let the stage that waits for a person go ahead."""
        return self._act(request, services.approve)


class RolloutDeviceViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """The devices of one rollout, a page at a time: each one's stage, state, target and last reported phase."""

    serializer_class = RolloutDeviceSerializer
    permission_classes = [HasScope]
    required_scopes = ("rollout",)
    pagination_class = LimitOffsetPagination
    filterset_class = RolloutDeviceFilter
    ordering_fields = ["stage_index", "state", "updated_at"]

    def get_queryset(self) -> Any:
        if getattr(self, "swagger_fake_view", False):  # the schema generator has no rollout to look up
            return RolloutDevice.objects.none()
        rollout = get_object_or_404(Rollout, pk=self.kwargs["rollout_pk"])
        # Only what the serializer shows: a device's desired document and heartbeat are kilobytes each.
        return (
            rollout.devices.select_related("device__site", "from_version")
            .only(*_ENTRY_FIELDS)
            .order_by("stage_index", "pk")
        )


_ENTRY_FIELDS = (
    "stage_index",
    "state",
    "target",
    "generation",
    "error",
    "device__device_id",
    "device__reported",
    "device__site__slug",
    "from_version__version",
)


class SiteRollbackView(APIView):
    """Return every device of a site to the site's last known-good version (docs/rollouts.md, "Site rollback")."""

    permission_classes = [HasScope]
    required_scopes = ("rollout",)
    # An operator rolls back the sites they operate (rollouts.rollback checks it).
    operators_act = True
    parser_classes = [JSONParser]

    def _site(self, slug: str) -> Site:
        return get_object_or_404(Site, slug=slug)

    @extend_schema(responses={200: SiteRollbackSerializer})
    def get(self, request: Request, slug: str) -> Response:
        """The preview: the version each model returns to, how many devices change, which rollouts stop."""
        return Response(rollback.plan(self._site(slug)).answer(done=False))

    @extend_schema(request=SiteRollbackRequestSerializer, responses={200: SiteRollbackSerializer, 409: ErrorSerializer})
    def post(self, request: Request, slug: str) -> Response:
        site = self._site(slug)
        body = SiteRollbackRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        if body.validated_data["dry_run"]:
            return Response(rollback.plan(site).answer(done=False))
        done = rollback.roll_back(site, actor=request.user, reason=body.validated_data["reason"])
        return Response(done.answer(done=True))


class VersionRollbackView(APIView):
    """Take a version back fleet-wide: every device sent it returns to the one before (docs/rollouts.md)."""

    permission_classes = [HasScope]
    required_scopes = ("rollout",)
    parser_classes = [JSONParser]

    def _version(self, name: str, version: str) -> ModelVersion:
        return get_object_or_404(ModelVersion.objects.select_related("model"), model__name=name, version=version)

    @extend_schema(responses={200: VersionRollbackSerializer})
    def get(self, request: Request, name: str, version: str) -> Response:
        """The preview: the version it returns to, how many devices go back, which rollouts stop."""
        return Response(rollback.version_plan(self._version(name, version)).answer(done=False))

    @extend_schema(
        request=SiteRollbackRequestSerializer, responses={200: VersionRollbackSerializer, 409: ErrorSerializer}
    )
    def post(self, request: Request, name: str, version: str) -> Response:
        row = self._version(name, version)
        body = SiteRollbackRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        if body.validated_data["dry_run"]:
            return Response(rollback.version_plan(row).answer(done=False))
        done = rollback.roll_back_version(row, actor=request.user, reason=body.validated_data["reason"])
        return Response(done.answer(done=True))


class WhatIfView(APIView):
    """Run a rollout plan on a simulated fleet and answer whether it would catch a bad candidate (rollouts.whatif).

    Nothing is stored or sent: the plan, gates and target are checked as for a
    real rollout, then run in simulated time against the scenario's devices.
    """

    permission_classes = [HasScope]
    required_scopes = ("rollout",)
    # Changes nothing, but costs CPU: those who may start rollouts may ask what one would do.
    operators_act = True
    parser_classes = [JSONParser]

    @extend_schema(request=WhatIfRequestSerializer, responses={200: WhatIfSerializer, 400: ErrorSerializer})
    def post(self, request: Request) -> Response:
        body = WhatIfRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        scenario = whatif.scenario_from(data["scenario"])
        result = whatif.run(
            scenario,
            data["plan"],
            candidate=data["candidate"],
            gate_overrides=data.get("gates"),
            target=data.get("target"),
            model_faults=whatif.faults_from(data.get("model_faults"), scenario, data["candidate"]),
            start_s=data["start_s"],
            max_devices=whatif.MAX_API_DEVICES,
        )
        return Response(result.as_json())
