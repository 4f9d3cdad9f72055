"""The rollout pages' forms: the list's filter, an action's reason, and starting a rollout of a version."""

from __future__ import annotations

import json
from typing import Any

from django import forms

from fleet.models import Site
from registry.models import Model
from rollouts.models import Rollout, RolloutTemplate

# What the start form offers when no template fits: a canary device, a tenth, then everyone.
DEFAULT_PLAN = {
    "stages": [{"kind": "count", "value": 1}, {"kind": "percent", "value": 10}, {"kind": "percent", "value": 100}]
}
# Actions that change what devices get must say why (kept in the audit log); the others may.
REASON_REQUIRED = ("pause", "abort")


class RolloutFilterForm(forms.Form):
    state = forms.ChoiceField(choices=[("", "any state"), *Rollout.STATES], required=False)
    model = forms.ChoiceField(choices=[], required=False)
    site = forms.SlugField(required=False, max_length=63)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        names = Model.objects.order_by("name").values_list("name", flat=True)
        field = self.fields["model"]
        assert isinstance(field, forms.ChoiceField)
        field.choices = [("", "any model"), *((name, name) for name in names)]


class ActionForm(forms.Form):
    reason = forms.CharField(max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2}))

    def __init__(self, data: Any = None, *, verb: str) -> None:
        # Prefixed by the verb: the page holds one form per action, each with its own reason field.
        super().__init__(data, prefix=verb)
        self.verb = verb
        self.fields["reason"].required = verb in REASON_REQUIRED

    def clean_reason(self) -> str:
        reason: str = self.cleaned_data["reason"].strip()
        if self.verb in REASON_REQUIRED and not reason:
            raise forms.ValidationError(f"Say why the rollout should {self.verb}.")
        return reason


class TemplateChoice(forms.ModelChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        """The template's name and its stages in words: "canary: 1 device, 10 %, 100 %"."""
        stages = obj.plan.get("stages", []) if isinstance(obj.plan, dict) else []
        shown = []
        for stage in stages if isinstance(stages, list) else []:
            kind, value = (stage.get("kind"), stage.get("value")) if isinstance(stage, dict) else (None, None)
            if kind == "count":
                shown.append(f"{value} device{'s' if value != 1 else ''}")
            elif kind == "percent":
                shown.append(f"{value} %")
            elif kind == "sites":
                shown.append(f"{value} site{'s' if value != 1 else ''}")
        return f"{obj.name}: {', '.join(shown)}" if shown else str(obj.name)


class NewRolloutForm(forms.Form):
    RUNNING, SITES = "running", "sites"

    template = TemplateChoice(
        queryset=RolloutTemplate.objects.order_by("name"),
        to_field_name="name",
        required=False,
        empty_label="Custom plan (below)",
        help_text="A template brings its plan and gate defaults.",
    )
    plan = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "class": "mono"}),
        help_text='Used when no template is chosen: {"stages": [{"kind": "count"|"percent"|"sites", "value": n}]}, '
        "the last stage percent 100.",
    )
    target = forms.ChoiceField(widget=forms.RadioSelect, choices=[])
    sites = forms.ModelMultipleChoiceField(
        queryset=Site.objects.order_by("name"),
        to_field_name="slug",
        required=False,
        widget=forms.CheckboxSelectMultiple,
    )
    gates = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2, "class": "mono"}),
        help_text='Optional gate settings over the defaults, e.g. {"soak_s": 900, "on_failure": "pause"}.',
    )
    reason = forms.CharField(max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2}))

    def __init__(self, *args: Any, model_name: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model_name = model_name
        target = self.fields["target"]
        assert isinstance(target, forms.ChoiceField)
        target.choices = [
            (self.RUNNING, f"Every device running {model_name}, at every site"),
            (self.SITES, "Every device at the sites chosen below"),
        ]
        target.initial = self.RUNNING
        self.fields["plan"].initial = json.dumps(DEFAULT_PLAN)

    def _json(self, name: str) -> Any:
        text = self.cleaned_data.get(name, "").strip()
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError as exc:
            raise forms.ValidationError(f"Not JSON: {exc}.") from None

    def clean_plan(self) -> Any:
        return self._json("plan")

    def clean_gates(self) -> Any:
        return self._json("gates")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if not data.get("template") and data.get("plan") is None and "plan" not in self.errors:
            self.add_error("plan", "Choose a template or give a plan.")
        if data.get("target") == self.SITES and not data.get("sites"):
            self.add_error("sites", "Choose at least one site.")
        return data

    def target_spec(self) -> dict[str, Any]:
        """The API's target object for what was chosen."""
        if self.cleaned_data["target"] == self.SITES:
            return {"sites": sorted(site.slug for site in self.cleaned_data["sites"])}
        return {"running_model": self.model_name}
