"""The dataset export's form: reviewed frames as a zip, built by ``escalations.export.build`` as the API's export is.

A read like the API's: anyone signed in may download. The form is a GET, so
a chosen export is a link that can be shared; with ``layout`` in the query
the zip is sent, else the form is shown.
"""

from __future__ import annotations

from django import forms
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from core.errors import ServiceError
from dashboard.escalations import model_choices, site_choices
from escalations import export


class ExportForm(forms.Form):
    layout = forms.ChoiceField(
        label="Layout",
        choices=[("imagefolder", "ImageFolder (classification)"), ("coco", "COCO (detection)")],
        initial="imagefolder",
    )
    site = forms.ChoiceField(required=False, label="Site")
    model = forms.ChoiceField(required=False, label="Model version")
    since = forms.DateTimeField(
        required=False, label="Captured from", widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )
    until = forms.DateTimeField(
        required=False, label="Captured before", widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )
    include_agreed = forms.BooleanField(required=False, label="Also frames the cloud answered as the edge did")

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.fields["site"].choices = [("", "all sites"), *site_choices()]  # type: ignore[attr-defined]
        self.fields["model"].choices = [("", "all versions"), *model_choices()]  # type: ignore[attr-defined]

    def clean(self) -> dict[str, object]:
        cleaned = super().clean() or {}
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until and since >= until:
            self.add_error("until", "Give a time after “Captured from”.")
        return cleaned


@login_required
def export_page(request: HttpRequest) -> HttpResponse | FileResponse:
    if "layout" not in request.GET:
        return render(request, "dashboard/escalation_export.html", {"form": ExportForm()})
    form = ExportForm(request.GET)
    if not form.is_valid():
        return render(request, "dashboard/escalation_export.html", {"form": form}, status=400)
    chosen = form.cleaned_data
    name, _, version = chosen["model"].partition("@")
    criteria = export.ExportFilter(
        site=chosen["site"] or None,
        model_name=name or None,
        model_version=version or None,
        since=chosen["since"],
        until=chosen["until"],
        include_agreed=chosen["include_agreed"],
    )
    try:
        made = export.build(criteria, fmt=chosen["layout"])
    except ServiceError as refused:
        context = {"form": form, "refused": refused.detail}
        return render(request, "dashboard/escalation_export.html", context, status=refused.status)
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    response = FileResponse(
        made.file,
        content_type="application/zip",
        as_attachment=True,
        filename=f"escalations-{chosen['layout']}-{stamp}.zip",
    )
    response["X-Edgefleet-Frames"] = str(made.frames)
    response["X-Edgefleet-Skipped"] = str(made.skipped)
    return response
