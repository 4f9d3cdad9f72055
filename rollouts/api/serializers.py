from __future__ import annotations

from typing import Any

from django.core.validators import RegexValidator
from django.db.models import Count
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.api.serializers import ReasonField, StrictInput
from core.errors import ServiceError
from rollouts import plan as plans
from rollouts.models import GateResult, Rollout, RolloutDevice, RolloutStage, RolloutTemplate

TEMPLATE_NAME = r"[a-z0-9][a-z0-9_.-]{0,62}"
PLAN_HELP = (
    'Ordered stages: {"stages": [{"kind": "count"|"percent"|"sites", "value": int, "requires_approval": bool,'
    ' "shadow": bool}]};'
    " the last stage is percent 100 (docs/rollouts.md)."
)
GATES_HELP = 'Gate settings over the defaults, e.g. {"soak_s": 900, "on_failure": "pause"} (docs/rollouts.md).'
TARGET_HELP = (
    'Which devices: {"sites": [slug], "labels": {key: value}, "hardware_profiles": [name], "running_model": name};'
    " every key given narrows it."
)


def _checked(parse: Any, value: Any, field: str) -> Any:
    try:
        return parse(value, field)
    except ServiceError as exc:
        raise serializers.ValidationError(exc.detail) from None


class RolloutTemplateSerializer(StrictInput, serializers.ModelSerializer):
    name = serializers.CharField(
        max_length=63,
        validators=[RegexValidator(f"^{TEMPLATE_NAME}$", "Use lowercase letters, digits, '.', '_', '-'.")],
    )
    plan = serializers.JSONField(help_text=PLAN_HELP)
    gate_defaults = serializers.JSONField(required=False, help_text=GATES_HELP)
    created_by = serializers.CharField(source="created_by.username", read_only=True, allow_null=True, default=None)

    class Meta:
        model = RolloutTemplate
        fields = ["id", "name", "description", "plan", "gate_defaults", "created_by", "created_at", "updated_at"]
        read_only_fields = ["id", "created_by", "created_at", "updated_at"]

    def validate_name(self, value: str) -> str:
        taken = RolloutTemplate.objects.filter(name=value)
        if self.instance is not None:
            taken = taken.exclude(pk=self.instance.pk)
        if taken.exists():
            raise serializers.ValidationError("A template with this name exists.")
        return value

    def validate_plan(self, value: Any) -> Any:
        _checked(plans.parse_plan, value, "plan")
        return value

    def validate_gate_defaults(self, value: Any) -> Any:
        return _checked(plans.parse_gates, value, "gate_defaults")


class RolloutCreateSerializer(StrictInput, serializers.Serializer):
    model = serializers.CharField(max_length=63)
    version = serializers.CharField(max_length=64)
    template = serializers.CharField(
        max_length=63, required=False, help_text="A template's name, for its plan and gates."
    )
    plan = serializers.JSONField(required=False, help_text=f"{PLAN_HELP} Replaces the template's plan.")
    target = serializers.JSONField(help_text=TARGET_HELP)
    gates = serializers.JSONField(required=False, help_text=f"{GATES_HELP} Over the template's gate defaults.")
    reason = serializers.CharField(max_length=2000, required=False, allow_blank=True)


class ActionSerializer(StrictInput, serializers.Serializer):
    reason = serializers.CharField(max_length=2000, required=False, allow_blank=True)


class GateResultSerializer(serializers.ModelSerializer):
    class Meta:
        model = GateResult
        fields = ["gate", "value", "threshold", "verdict", "details", "evaluated_at"]
        read_only_fields = fields


class RolloutStageSerializer(serializers.ModelSerializer):
    gate_results = GateResultSerializer(many=True, read_only=True)
    devices = serializers.SerializerMethodField()
    approved_by = serializers.CharField(source="approved_by.username", read_only=True, allow_null=True, default=None)

    class Meta:
        model = RolloutStage
        fields = [
            "index",
            "kind",
            "value",
            "requires_approval",
            "shadow",
            "shadow_started_at",
            "shadow_until",
            "shadow_passed_at",
            "approved_by",
            "approved_at",
            "state",
            "verdict",
            "devices",
            "started_at",
            "all_active_at",
            "soak_until",
            "soak_extensions",
            "finished_at",
            "gate_results",
        ]
        read_only_fields = fields

    def get_devices(self, stage: RolloutStage) -> int:
        counts: dict[int, int] = self.context.get("stage_sizes", {})
        return counts.get(stage.index, 0)


class RolloutDeviceSerializer(serializers.ModelSerializer):
    device_id = serializers.CharField(source="device.device_id", read_only=True)
    site = serializers.CharField(source="device.site.slug", read_only=True)
    from_version = serializers.CharField(source="from_version.version", read_only=True, allow_null=True, default=None)
    phase = serializers.SerializerMethodField(help_text="The update phase the device last reported.")

    class Meta:
        model = RolloutDevice
        fields = ["device_id", "site", "stage_index", "state", "target", "from_version", "generation", "phase", "error"]
        read_only_fields = fields

    def get_phase(self, entry: RolloutDevice) -> str | None:
        reported = entry.device.reported
        phase = reported.get("phase") if isinstance(reported, dict) else None
        return phase if isinstance(phase, str) else None


class RolloutSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="version.model.name", read_only=True)
    version = serializers.CharField(source="version.version", read_only=True)
    template = serializers.CharField(source="template.name", read_only=True, allow_null=True, default=None)
    created_by = serializers.CharField(source="created_by.username", read_only=True, allow_null=True, default=None)
    gates = serializers.SerializerMethodField(help_text="The gate settings in force: defaults, template, overrides.")

    class Meta:
        model = Rollout
        fields = [
            "id",
            "model",
            "version",
            "template",
            "target",
            "plan",
            "gate_overrides",
            "gates",
            "state",
            "current_stage",
            "created_by",
            "reason",
            "halt_reason",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields

    @extend_schema_field({"type": "object", "additionalProperties": True})
    def get_gates(self, rollout: Rollout) -> dict[str, Any]:
        return rollout.gates()


class RolloutDetailSerializer(RolloutSerializer):
    stages = serializers.SerializerMethodField()
    device_states = serializers.SerializerMethodField(
        help_text="How many of its devices are in each state; the devices, a page at a time: "
        "GET /api/v1/rollouts/{id}/devices/."
    )

    class Meta(RolloutSerializer.Meta):
        fields = [*RolloutSerializer.Meta.fields, "stages", "device_states"]
        read_only_fields = fields

    @extend_schema_field(RolloutStageSerializer(many=True))
    def get_stages(self, rollout: Rollout) -> Any:
        sizes = dict(rollout.devices.values("stage_index").annotate(n=Count("pk")).values_list("stage_index", "n"))
        stages = rollout.stages.prefetch_related("gate_results").select_related("approved_by")
        return RolloutStageSerializer(stages, many=True, context={"stage_sizes": sizes}).data

    @extend_schema_field(
        {
            "type": "object",
            "properties": {state: {"type": "integer"} for state, _ in RolloutDevice.STATES},
            "required": [state for state, _ in RolloutDevice.STATES],
        }
    )
    def get_device_states(self, rollout: Rollout) -> dict[str, int]:
        # Counted in the database: a rollout to 10,000 devices answers in the same few queries as one to 10.
        counts = dict(rollout.devices.values("state").annotate(n=Count("pk")).values_list("state", "n"))
        return {state: counts.get(state, 0) for state, _ in RolloutDevice.STATES}


class SiteRollbackRequestSerializer(StrictInput, serializers.Serializer):
    reason = ReasonField()
    dry_run = serializers.BooleanField(required=False, default=False, help_text="Answer the plan and change nothing.")


class SiteRollbackModelSerializer(serializers.Serializer):
    model = serializers.CharField()
    version = serializers.CharField(help_text="The site's last known-good version, which its devices are sent.")
    devices = serializers.IntegerField(help_text="Devices that change (those on another version).")
    offline_devices = serializers.IntegerField(help_text="Of those, offline now: they converge when they return.")
    from_versions = serializers.ListField(child=serializers.CharField())


class SiteRollbackSerializer(serializers.Serializer):
    site = serializers.CharField()
    done = serializers.BooleanField(help_text="false for a preview or a dry run.")
    models = SiteRollbackModelSerializer(many=True)
    stops_rollouts = serializers.ListField(child=serializers.IntegerField(), help_text="Rollouts touching the site.")
    without_known_good = serializers.ListField(
        child=serializers.CharField(), help_text="Models run at the site that no completed rollout brought there."
    )


class VersionRollbackSerializer(serializers.Serializer):
    model = serializers.CharField()
    version = serializers.CharField()
    to_version = serializers.CharField(
        allow_null=True, help_text="The newest older version a rollout completed (else the newest older one)."
    )
    done = serializers.BooleanField(help_text="false for a preview or a dry run.")
    devices = serializers.IntegerField(help_text="Devices sent the version, which go back.")
    offline_devices = serializers.IntegerField(help_text="Of those, offline now: they converge when they return.")
    stops_rollouts = serializers.ListField(child=serializers.IntegerField(), help_text="Rollouts of the version.")


# --- what-if runs (rollouts.whatif) ---------------------------------------------------

SCENARIO_HELP = (
    "The simulated fleet: a scenario's keys as JSON (sites, hardware, model, faults, seed, ...), or the text of a"
    " scenario TOML file (docs/simulator.md)."
)


class WhatIfRequestSerializer(StrictInput, serializers.Serializer):
    scenario = serializers.JSONField(help_text=SCENARIO_HELP)
    plan = serializers.JSONField(help_text=PLAN_HELP)
    gates = serializers.JSONField(required=False, help_text=GATES_HELP)
    target = serializers.JSONField(
        required=False,
        help_text='Which simulated devices: {"sites": [slug], "hardware_profiles": [name]}; all if absent.',
    )
    candidate = serializers.CharField(
        max_length=64, default="candidate", help_text="The version rolled out; bad_model faults naming it apply."
    )
    model_faults = serializers.JSONField(
        required=False,
        help_text=(
            "bad_model faults of the candidate beside the scenario's, e.g."
            ' [{"hardware": "rpi5", "latency_factor": 3}] (docs/simulator.md).'
        ),
    )
    start_s = serializers.FloatField(
        default=0.0, min_value=0.0, max_value=30 * 86400, help_text="When the rollout starts, in scenario seconds."
    )


class WhatIfOutcomeSerializer(serializers.Serializer):
    gate = serializers.CharField()
    verdict = serializers.CharField()
    value = serializers.FloatField(allow_null=True)
    threshold = serializers.FloatField(allow_null=True)
    at_s = serializers.FloatField(help_text="When it was judged, in seconds from the rollout's start.")
    details = serializers.DictField()


class WhatIfStageSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    kind = serializers.CharField()
    value = serializers.IntegerField()
    shadow = serializers.BooleanField()
    requires_approval = serializers.BooleanField(help_text="Taken as approved at once in a what-if.")
    devices = serializers.IntegerField()
    sent = serializers.IntegerField()
    active = serializers.IntegerField()
    failed = serializers.IntegerField()
    silent = serializers.IntegerField()
    started_at_s = serializers.FloatField(allow_null=True)
    all_active_at_s = serializers.FloatField(allow_null=True)
    judged_at_s = serializers.FloatField(allow_null=True)
    soak_extensions = serializers.IntegerField()
    verdict = serializers.CharField(help_text="pass, fail, marginal, or not_reached.")
    gates = WhatIfOutcomeSerializer(many=True)


class WhatIfSerializer(serializers.Serializer):
    verdict = serializers.ChoiceField(
        choices=["caught", "not_caught", "false_alarm", "completed"],
        help_text=(
            "caught: a faulty candidate halted; not_caught: it reached everyone;"
            " false_alarm: a sound one halted; completed: a sound one reached everyone."
        ),
    )
    summary = serializers.CharField()
    candidate = serializers.CharField()
    faulty = serializers.BooleanField(help_text="Whether any bad_model fault touches the candidate on the target.")
    halted_at_stage = serializers.IntegerField(allow_null=True)
    failed_gates = serializers.ListField(child=serializers.CharField())
    devices_in_target = serializers.IntegerField()
    devices_touched = serializers.IntegerField(help_text="Devices sent the candidate.")
    devices_failed = serializers.IntegerField(help_text="Devices whose install failed.")
    devices_on_candidate = serializers.IntegerField(help_text="Devices running the candidate at the end.")
    duration_s = serializers.FloatField(help_text="From the start to completion or halt, in simulated seconds.")
    stages = WhatIfStageSerializer(many=True)
    gates = serializers.DictField(help_text="The gate settings the run used (defaults and overrides).")
