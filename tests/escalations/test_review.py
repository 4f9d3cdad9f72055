"""The review queue and the dataset export: disagreements wait for a person, decisions are audited and exported."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from core.models import AuditLog, Role
from escalations import answering
from escalations.models import Escalation, EscalationState
from fleet import access

pytestmark = pytest.mark.django_db


@pytest.fixture
def answered(uploaded: Callable[..., list[Escalation]], settings: Any) -> list[Escalation]:
    """Twelve rendered crops the edge called ok, answered by the cloud model: the defects wait for review."""
    settings.CLOUD_MAX_QUEUE_DELAY_MS = 0
    settings.CLOUD_REVIEW_BELOW_PCT = 0
    rows = uploaded(12, edge_label="ok")
    answering.answer_waiting()
    return list(Escalation.objects.filter(pk__in=[r.pk for r in rows]).order_by("pk"))


def test_disagreements_wait_in_the_review_queue(answered, token_client) -> None:
    queue = token_client("read").get("/api/v1/escalations/?state=review&limit=100").json()["results"]
    waiting = {r.pk for r in answered if r.state == EscalationState.REVIEW}
    assert waiting and {row["id"] for row in queue} == waiting
    assert all(row["label"] == "ok" and row["cloud_label"] != "ok" for row in queue)


def test_a_reviewer_confirms_or_corrects_and_every_decision_is_audited(answered, token_client) -> None:
    client = token_client("fleet")
    first, second = [r for r in answered if r.state == EscalationState.REVIEW][:2]

    confirmed = client.post(f"/api/v1/escalations/{first.pk}/review/", {"label": first.cloud_label}, format="json")
    corrected = client.post(
        f"/api/v1/escalations/{second.pk}/review/", {"label": "ok", "note": "a shadow, not a crack"}, format="json"
    )

    assert confirmed.status_code == corrected.status_code == 200, (confirmed.content, corrected.content)
    assert confirmed.json()["state"] == "reviewed" and confirmed.json()["review_label"] == first.cloud_label
    assert corrected.json()["review_note"] == "a shadow, not a crack"
    decisions = {a.target_id: a.data for a in AuditLog.objects.filter(action="escalation.review")}
    assert decisions[str(first.pk)]["decision"] == "confirm_cloud"
    # The reviewer sided with the edge: it was right and the cloud was not.
    assert decisions[str(second.pk)]["decision"] == "confirm_edge" and decisions[str(second.pk)]["label"] == "ok"
    assert (
        client.get("/api/v1/escalations/?state=review&limit=100").json()["count"]
        == len([r for r in answered if r.state == EscalationState.REVIEW]) - 2
    )


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"label": "rust"}, "invalid_label"),
        ({"label": 3}, "invalid"),
        ({"label": "ok", "boxes": [{"label": "ok", "box": [0, 0, 10_000, 5]}]}, "invalid_boxes"),
        ('{"label": "ok", "boxes": [{"label": "ok", "box": [0, 0, NaN, 5]}]}', "parse_error"),
        ({"label": "ok", "note": "x" * 2001}, "invalid"),
    ],
)
def test_a_bad_decision_is_refused_in_the_error_shape_and_changes_nothing(answered, token_client, body, code):
    row = next(r for r in answered if r.state == EscalationState.REVIEW)
    url = f"/api/v1/escalations/{row.pk}/review/"
    client = token_client("fleet")
    if isinstance(body, str):  # JSON a client library would not write
        response = client.post(url, body, content_type="application/json")
    else:
        response = client.post(url, body, format="json")
    assert response.status_code == 400 and response.json()["code"] == code, response.content
    row.refresh_from_db()
    assert row.state == EscalationState.REVIEW and not AuditLog.objects.filter(action="escalation.review").exists()


def test_reviewing_needs_the_fleet_scope_and_a_cloud_answer(uploaded, token_client) -> None:
    (row,) = uploaded(1)
    assert (
        token_client("read").post(f"/api/v1/escalations/{row.pk}/review/", {"label": "ok"}, format="json").status_code
        == 403
    )
    waiting = token_client("fleet").post(f"/api/v1/escalations/{row.pk}/review/", {"label": "ok"}, format="json")
    assert waiting.status_code == 409 and waiting.json()["code"] == "invalid_state"


def unzip(response: Any) -> tuple[dict[str, Any], list[str]]:
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    return json.loads(archive.read("manifest.json")), sorted(archive.namelist())


def test_the_export_is_an_imagefolder_of_reviewed_frames_whose_manifest_says_where_each_label_came_from(
    answered, token_client
) -> None:
    client = token_client("fleet")
    reviewed = [r for r in answered if r.state == EscalationState.REVIEW][:2]
    for row in reviewed:
        client.post(f"/api/v1/escalations/{row.pk}/review/", {"label": "scratch"}, format="json")

    response = token_client("read").get("/api/v1/escalations/export/?site=plant-a")
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    manifest, names = unzip(response)
    assert names == sorted(["manifest.json", *(f"scratch/{r.pk}.jpg" for r in reviewed)])
    assert {(i["escalation"], i["label"], i["label_source"], i["edge_label"]) for i in manifest["items"]} == {
        (r.pk, "scratch", "reviewer", "ok") for r in reviewed
    }

    agreed = [r for r in answered if r.state == EscalationState.ANSWERED]
    manifest, _ = unzip(token_client("read").get("/api/v1/escalations/export/?include_agreed=true"))
    sources = {i["escalation"]: i["label_source"] for i in manifest["items"]}
    assert {sources[r.pk] for r in agreed} <= {"cloud"} and len(sources) == len(reviewed) + len(agreed)
    # Another site's frames, or a filter nobody matches, give an empty set, not an error.
    manifest, names = unzip(token_client("read").get("/api/v1/escalations/export/?site=elsewhere"))
    assert manifest["frames"] == 0 and names == ["manifest.json"]


def test_the_coco_export_carries_the_boxes_a_reviewer_drew(answered, token_client) -> None:
    row = next(r for r in answered if r.state == EscalationState.REVIEW)
    box = {"label": "crack", "box": [4, 6, 20, 10]}
    token_client("fleet").post(
        f"/api/v1/escalations/{row.pk}/review/", {"label": "crack", "boxes": [box]}, format="json"
    )

    response = token_client("read").get("/api/v1/escalations/export/?layout=coco")
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    coco = json.loads(archive.read("annotations.json"))
    assert [c["name"] for c in coco["categories"]] == ["crack"]
    assert [a["bbox"] for a in coco["annotations"]] == [[4.0, 6.0, 20.0, 10.0]]
    assert coco["images"][0]["file_name"] == f"images/{row.pk}.jpg"
    assert token_client("read").get("/api/v1/escalations/export/?layout=voc").status_code == 400
    # An empty value is a value, and not a date-time.
    empty = token_client("read").get("/api/v1/escalations/export/?until=")
    assert empty.status_code == 400 and empty.json()["code"] == "invalid"


def test_an_operator_reviews_their_sites_frames_and_is_refused_at_another_site(answered, admin_user, site, other_site):
    first, second = [r for r in answered if r.state == EscalationState.REVIEW][:2]
    mine = get_user_model().objects.create_user("olga", password="pw-olga-123")
    theirs = get_user_model().objects.create_user("otto", password="pw-otto-123")
    access.set_role(actor=admin_user, user=mine, kind=Role.OPERATOR, sites=[site])
    access.set_role(actor=admin_user, user=theirs, kind=Role.OPERATOR, sites=[other_site])
    olga, otto = APIClient(), APIClient()
    olga.force_login(mine)
    otto.force_login(theirs)

    refused = otto.post(f"/api/v1/escalations/{first.pk}/review/", {"label": first.cloud_label}, format="json")
    done = olga.post(f"/api/v1/escalations/{second.pk}/review/", {"label": second.cloud_label}, format="json")

    assert refused.status_code == 403 and refused.json()["code"] == "site_forbidden"
    assert Escalation.objects.get(pk=first.pk).state == EscalationState.REVIEW
    assert done.status_code == 200, done.content
    assert AuditLog.objects.get(action="escalation.review").actor == mine
