"""The escalations pages: the review queue and a frame's review, the threshold advisor and its Apply, the export.

Frames arrive as a device uploads them (the API, with images rendered here);
the cloud worker's loop answers them with the cloud model's load stubbed to
answer what each test says, so the states (review, answered) are the worker's.
Users: an admin (alice), a viewer (victor), an operator of plant-a (olga) and
one of plant-b (bruno).
"""

from __future__ import annotations

import base64
import io
import json
import re
import zipfile
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from unittest import mock

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from PIL import Image

from agent.kernel.decode import Result
from core.models import AuditLog
from escalations import answering, cloud, review
from escalations.models import Escalation, EscalationState
from fleet import access
from fleet import services as fleet
from fleet.models import Device, EscalationPrivacy, Site
from registry.models import Bundle, Model, ModelVersion

pytestmark = pytest.mark.django_db

QUEUE = "/escalations/"
ADVISOR = "/escalations/advisor/"
EXPORT = "/escalations/export/"
LABELS = ["ok", "scratch", "dent"]
CAPTURED = datetime(2026, 12, 1, 10, 30, tzinfo=timezone.utc)


# ---- frames as devices send them -----------------------------------------------------------------


def part_image(seed: int, width: int = 96, height: int = 72) -> bytes:
    """A grey part on a belt with a dark scratch across it, different for each seed (a JPEG)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    belt = 60 + 40 * (x / width) + rng.normal(0, 4, (height, width))
    part = ((x - width / 2) ** 2 / (width / 3) ** 2 + (y - height / 2) ** 2 / (height / 3) ** 2) < 1
    pixels = np.where(part, 170 + 20 * np.sin(y / 5), belt)
    start = rng.integers(10, width // 2)
    for i in range(width // 3):
        row = int(height / 2 + (i - width / 6) * 0.4)
        if 0 <= row < height:
            pixels[row, min(width - 1, start + i)] = 20
    rgb = np.stack([pixels, pixels * 0.95, pixels * 0.9], axis=-1).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def parts_model(version: str = "1.0.0") -> ModelVersion:
    """The edge model the frames come from, as the registry knows it: its labels are the reviewer's choices."""
    model, _ = Model.objects.get_or_create(name="parts", defaults={"task": "classification", "labels": LABELS})
    return ModelVersion.objects.create(
        model=model,
        version=version,
        sequence=model.versions.count() + 1,
        content_digest="0" * 64,
        input_spec={},
        output={},
        labels=LABELS,
    )


def cloud_answering(answers: list[tuple[str, float] | None]) -> Any:
    """The cloud model's load, stubbed: one ``(label, confidence)`` per frame of the batch, in order."""
    model = mock.create_autospec(cloud.CloudModel, instance=True)
    model.name, model.version = "cloud-classifier", "2.0.0"
    model.answer.return_value = [None if a is None else Result(label=a[0], confidence=a[1]) for a in answers]
    return mock.patch("escalations.cloud.load", autospec=True, return_value=model)


class Uploader:
    """Uploads frames as a device of a site, then lets the cloud worker answer them."""

    def __init__(self, client: Any, enroll: Callable[..., Any]) -> None:
        self.client, self.enroll, self.devices = client, enroll, {}
        self.count = 0

    def device(self, site: Site) -> Any:
        if site.pk not in self.devices:
            self.devices[site.pk] = self.enroll(site, name=f"cam-{site.slug}")
        return self.devices[site.pk]

    def __call__(
        self,
        site: Site,
        frames: list[tuple[str, float, str | None, float]],
        *,
        version: str = "1.0.0",
        threshold: float = 0.6,
        image: bool = True,
        reason: str = "unsure",
    ) -> list[Escalation]:
        """``frames``: (edge label, edge confidence, cloud label or None, cloud confidence), oldest first."""
        enrolled = self.device(site)
        auth = base64.b64encode(f"{enrolled.device.device_id}:{enrolled.secret}".encode()).decode()
        pks = []
        for edge, confidence, _, _ in frames:
            self.count += 1
            metadata = {
                "device_id": enrolled.device.device_id,
                "ts": (CAPTURED + timedelta(seconds=self.count)).isoformat(),
                "model_name": "parts",
                "model_version": version,
                "threshold": threshold,
                "frame": f"frame-{self.count:05d}",
                "reason": reason,
                "sample_rate": 1.0 if reason == "unsure" else 0.1,
                "result": {"label": edge, "confidence": confidence, "top": [[edge, confidence], ["dent", 0.2]]},
            }
            parts: dict[str, Any] = {"metadata": json.dumps(metadata)}
            if image:
                parts["frame"] = io.BytesIO(part_image(self.count))
                parts["frame"].name = "frame.jpg"
            response = self.client.post("/api/v1/escalations/", parts, HTTP_AUTHORIZATION=f"Basic {auth}")
            assert response.status_code == 201, response.content
            pks.append(response.json()["id"])
        rows = list(Escalation.objects.filter(pk__in=pks).order_by("pk"))
        if image:
            with cloud_answering([None if c is None else (c, cc) for _, _, c, cc in frames]):
                answering.answer_batch(rows)
        return list(Escalation.objects.filter(pk__in=pks).order_by("pk"))


@pytest.fixture
def escalate(enroll_device: Callable[..., Any], media: Any, monkeypatch: pytest.MonkeyPatch, settings: Any) -> Uploader:
    # The upload's nudge to the cloud worker is held back (tasks run eagerly): the test's own run answers.
    monkeypatch.setattr("escalations.tasks.answer_escalations.delay", lambda: None)
    settings.CLOUD_REVIEW_BELOW_PCT = 0
    parts_model()
    return Uploader(Client(), enroll_device)


@pytest.fixture
def media(settings: Any, tmp_path: Any) -> Any:
    root = tmp_path / "media"
    root.mkdir()
    settings.MEDIA_ROOT = root
    return root


def disagreeing(n: int) -> list[tuple[str, float, str, float]]:
    """``n`` frames the edge called ok and the cloud a scratch: each waits for a person."""
    return [("ok", 0.41 + i / 1000, "scratch", 0.9) for i in range(n)]


# ---- people in each role -------------------------------------------------------------------------


def operator_of(username: str, site: Site) -> Any:
    user = get_user_model().objects.create_user(username, password=f"pw-{username}-123")
    access.set_role(actor=None, user=user, kind="operator", sites=[site])
    return user


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def olga(site: Site) -> Client:
    return client_for(operator_of("olga", site))


@pytest.fixture
def bruno(other_site: Site) -> Client:
    return client_for(operator_of("bruno", other_site))


def body(response: Any) -> str:
    return response.content.decode()


# ---- the queue -----------------------------------------------------------------------------------


def test_the_queue_lists_the_frames_waiting_for_a_person_newest_first(
    escalate: Uploader, site: Site, viewer_client: Client
) -> None:
    rows = escalate(site, [*disagreeing(3), ("ok", 0.5, "ok", 0.95)])
    waiting = [r for r in rows if r.state == EscalationState.REVIEW]
    assert len(waiting) == 3 and rows[3].state == EscalationState.ANSWERED

    page = body(viewer_client.get(QUEUE))

    listed = [int(pk) for pk in _listed(page)]
    assert listed == [r.pk for r in reversed(waiting)]
    assert "3 frames match" in page and "You may look, not review" in page
    assert f'href="/escalations/{waiting[-1].pk}/"' in page
    # Any state: the answered frame too.
    assert len(_listed(body(viewer_client.get(QUEUE, {"state": ""})))) == 4
    assert "None" not in page


def _listed(page: str) -> list[str]:
    return re.findall(r'<tr data-escalation="(\d+)"', page)


def test_the_queue_filters_by_site_version_state_and_disagreement(
    escalate: Uploader, site: Site, other_site: Site, admin_client: Client
) -> None:
    parts_model("1.1.0")
    here = escalate(site, [*disagreeing(2), ("ok", 0.5, "ok", 0.95)])
    there = escalate(other_site, disagreeing(1))
    newer = escalate(site, disagreeing(1), version="1.1.0")

    def listed(**query: str) -> set[int]:
        response = admin_client.get(QUEUE, query)
        assert response.status_code == 200
        return {int(pk) for pk in _listed(body(response))}

    assert listed(site="plant-b") == {there[0].pk}
    assert listed(model="parts@1.1.0") == {newer[0].pk}
    assert listed(state="answered") == {here[2].pk}
    assert listed(state="", agreement="agree") == {here[2].pk}
    assert listed(state="", agreement="disagree", site="plant-a", model="parts@1.0.0") == {r.pk for r in here[:2]}


def test_a_filter_nobody_offers_is_a_400_that_names_it(escalate: Uploader, site: Site, viewer_client: Client) -> None:
    escalate(site, disagreeing(1))
    response = viewer_client.get(QUEUE, {"state": "lost"})
    assert response.status_code == 400 and 'data-testid="filter-error"' in body(response)


def test_an_empty_queue_says_it_is_clear(viewer_client: Client, db: None) -> None:
    page = body(viewer_client.get(QUEUE))
    assert "the queue is clear" in page and "None" not in page


def test_the_queue_costs_the_same_queries_however_long_it_is(
    escalate: Uploader, site: Site, other_site: Site, olga: Client
) -> None:
    escalate(site, disagreeing(2))
    with CaptureQueriesContext(connection) as short:
        assert olga.get(QUEUE, {"state": ""}).status_code == 200
    escalate(other_site, disagreeing(9))
    escalate(site, [("ok", 0.5, "ok", 0.95)] * 3)
    with CaptureQueriesContext(connection) as long:
        page = body(olga.get(QUEUE, {"state": ""}))
    assert len(_listed(page)) == 14
    assert len(long.captured_queries) == len(short.captured_queries), [q["sql"] for q in long.captured_queries]


# ---- one frame -----------------------------------------------------------------------------------


def test_a_frame_shows_its_image_both_answers_and_the_shortcuts(
    escalate: Uploader, site: Site, admin_client: Client
) -> None:
    older, newer = escalate(site, disagreeing(2))

    response = admin_client.get(f"/escalations/{older.pk}/?state=review")

    page = body(response)
    assert response.status_code == 200
    assert f'src="/api/v1/escalations/{older.pk}/image/"' in page
    assert 'data-testid="confirm-edge"' in page and "Confirm edge: ok" in page
    assert 'data-testid="confirm-cloud"' in page and "Confirm cloud: scratch" in page
    assert all(f'value="{label}" data-shortcut="{i}"' in page for i, label in enumerate(LABELS, 1))
    assert "0.410" in page and "0.900" in page and "cloud-classifier@2.0.0" in page
    # Newest first: the older frame's previous one is the newer, and it has no next.
    assert f'href="/escalations/{newer.pk}/?site=&amp;model=&amp;state=review&amp;agreement="' in page
    assert "last in the queue" in page and 'data-testid="shortcuts"' in page and "js/review.js" in page
    assert "None" not in page
    # The image comes from the API's image view, with the page's session.
    image = admin_client.get(f"/api/v1/escalations/{older.pk}/image/")
    assert image.status_code == 200 and image["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(b"".join(image.streaming_content))).size == (96, 72)


def test_a_metadata_only_frame_says_it_has_no_pixels(escalate: Uploader, site: Site, admin_client: Client) -> None:
    Site.objects.filter(pk=site.pk).update(escalation_privacy=EscalationPrivacy.METADATA)
    site.refresh_from_db()
    (row,) = escalate(site, disagreeing(1), image=False)

    page = body(admin_client.get(f"/escalations/{row.pk}/"))

    assert "keeps no pixels (privacy: metadata only)" in page and "<img" not in page
    assert "No pixels reached the cloud model" in page and 'data-testid="confirm-edge"' not in page
    assert "None" not in page


def test_a_viewer_sees_no_buttons_and_a_forged_review_is_refused(
    escalate: Uploader, site: Site, viewer_client: Client
) -> None:
    (row,) = escalate(site, disagreeing(1))
    page = body(viewer_client.get(f"/escalations/{row.pk}/"))
    assert "Only admins and operators of Plant A may review" in page and 'name="label"' not in page

    assert viewer_client.post(f"/escalations/{row.pk}/", {"label": "scratch"}).status_code == 403

    row.refresh_from_db()
    assert row.state == EscalationState.REVIEW and not AuditLog.objects.filter(action="escalation.review").exists()


def test_an_operator_of_another_site_may_not_review_here(
    escalate: Uploader, site: Site, bruno: Client, olga: Client
) -> None:
    (row,) = escalate(site, disagreeing(1))
    assert 'name="label"' not in body(bruno.get(f"/escalations/{row.pk}/"))
    assert bruno.post(f"/escalations/{row.pk}/", {"label": "scratch"}).status_code == 403
    row.refresh_from_db()
    assert row.state == EscalationState.REVIEW

    # The site's own operator may.
    assert 'data-testid="confirm-cloud"' in body(olga.get(f"/escalations/{row.pk}/"))
    assert olga.post(f"/escalations/{row.pk}/", {"label": "scratch"}).status_code == 302
    row.refresh_from_db()
    assert (row.state, row.reviewed_by.username) == (EscalationState.REVIEWED, "olga")


def test_an_admins_review_is_audited_and_the_next_frame_in_the_queue_opens(
    escalate: Uploader, site: Site, admin_client: Client
) -> None:
    _, second, third = escalate(site, disagreeing(3))
    query = "site=plant-a&model=&state=review&agreement="

    response = admin_client.post(f"/escalations/{third.pk}/?{query}", {"label": "ok", "note": "a shadow"}, follow=True)

    assert response.redirect_chain == [(f"/escalations/{second.pk}/?{query}", 302)]
    assert f"Frame {third.frame_id} labelled ok (confirm edge)." in body(response)
    third.refresh_from_db()
    assert (third.state, third.review_label, third.review_note) == (EscalationState.REVIEWED, "ok", "a shadow")
    audit = AuditLog.objects.get(action="escalation.review")
    assert (audit.actor_label, audit.target_id, audit.data["decision"]) == ("alice", str(third.pk), "confirm_edge")


def test_reviewing_the_last_frame_of_the_queue_returns_to_the_queue(
    escalate: Uploader, site: Site, admin_client: Client
) -> None:
    (row,) = escalate(site, disagreeing(1))
    response = admin_client.post(f"/escalations/{row.pk}/", {"label": "scratch"}, follow=True)
    assert response.redirect_chain[-1][0] == "/escalations/"
    page = body(response)
    assert "That was the last frame in this queue." in page and "the queue is clear" in page


def test_a_label_the_model_does_not_have_is_refused_with_the_services_reason(
    escalate: Uploader, site: Site, admin_client: Client
) -> None:
    (row,) = escalate(site, disagreeing(1))
    response = admin_client.post(f"/escalations/{row.pk}/", {"label": "rust"}, follow=True)
    assert response.redirect_chain == [(f"/escalations/{row.pk}/", 302)]
    assert "&#x27;rust&#x27; is not a label of parts 1.0.0" in body(response)
    row.refresh_from_db()
    assert row.state == EscalationState.REVIEW


def test_a_review_needs_the_csrf_token(escalate: Uploader, site: Site, admin_user: Any) -> None:
    (row,) = escalate(site, disagreeing(1))
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    assert client.post(f"/escalations/{row.pk}/", {"label": "scratch"}).status_code == 403


def test_an_unknown_frame_is_404(viewer_client: Client, db: None) -> None:
    assert viewer_client.get("/escalations/999999/").status_code == 404


# ---- the threshold advisor -----------------------------------------------------------------------


@pytest.fixture
def advised(escalate: Uploader, site: Site) -> list[Escalation]:
    """Twenty answered frames: the edge is right when sure (above 0.5), wrong below; two reviewed."""
    frames = [(("ok", c, "ok", 0.95) if c >= 0.5 else ("ok", c, "scratch", 0.9)) for c in np.linspace(0.05, 0.95, 20)]
    rows = escalate(site, [(e, float(c), cl, cc) for e, c, cl, cc in frames])
    return rows


@pytest.fixture
def on_parts(site: Site, enroll_device: Callable[..., Any]) -> list[Device]:
    """Two cameras at plant-a that are sent parts 1.0.0."""
    version = ModelVersion.objects.get(model__name="parts", version="1.0.0")
    Bundle.objects.create(
        version=version,
        target="cpu-fp32",
        file="b/parts-1.0.0.tar",
        sha256="1" * 64,
        size=4_500_000,
        manifest_sha256="2" * 64,
        key_id="k1",
    )
    cameras = [enroll_device(site, name=f"line-{i}").device for i in range(2)]
    for camera in cameras:
        fleet.assign_model(camera, version, actor=None)
    return cameras


def test_an_empty_advisor_says_no_data_and_why(viewer_client: Client, db: None) -> None:
    page = body(viewer_client.get(ADVISOR))
    assert "no data" in page and "No escalated frame has a cloud answer yet" in page
    assert "<canvas" not in page and "None" not in page


def test_the_advisor_draws_the_curve_and_marks_its_pick(advised: list[Escalation], viewer_client: Client) -> None:
    response = viewer_client.get(ADVISOR, {"model": "parts@1.0.0", "site": "plant-a", "accuracy": "100"})

    page = body(response)
    assert response.status_code == 200
    chart = json.loads(page.split('<script id="advisor-data" type="application/json">')[1].split("</script>")[0])
    assert len(chart["points"]) > 20 and all({"x", "y", "t"} <= set(p) for p in chart["points"])
    # Escalating every frame the edge got wrong (those below 0.5) is the cheapest way to be always right.
    assert chart["pick"]["y"] == 1.0 and chart["pick"]["x"] == 0.5
    assert (
        "Recommended threshold 0.48</strong>: it escalates 10 of 20 frames, the lowest escalation rate (50.0%)" in page
    )
    assert "js/advisor.js" in page and "chart.umd.min.js" in page
    assert 'data-testid="advisor-unreviewed"' in page
    assert 'data-testid="no-apply"' in page and 'name="threshold"' not in page
    assert "None" not in page


def test_the_advisor_starts_on_the_first_version_with_default_targets(
    advised: list[Escalation], viewer_client: Client
) -> None:
    page = body(viewer_client.get(ADVISOR))
    assert 'value="parts@1.0.0" selected' in page and 'name="budget" value="10.0"' in page
    assert 'data-testid="recommendation"' in page and "<canvas" in page


def test_a_version_without_answers_at_a_site_says_no_data(
    advised: list[Escalation], other_site: Site, viewer_client: Client
) -> None:
    page = body(viewer_client.get(ADVISOR, {"model": "parts@1.0.0", "site": "plant-b"}))
    assert "No data." in page and "at Plant B has a cloud answer yet" in page and "<canvas" not in page


def test_a_viewer_or_another_sites_operator_may_not_apply(
    advised: list[Escalation], on_parts: list[Device], viewer_client: Client, bruno: Client
) -> None:
    form = {"model": "parts@1.0.0", "site": "plant-a", "threshold": "0.5", "reason": "advisor"}
    assert viewer_client.post(ADVISOR, form).status_code == 403
    page = body(bruno.get(ADVISOR, {"model": "parts@1.0.0"}))
    assert '<option value="plant-b"' in page.split('aria-label="Apply a threshold"')[1]
    assert '<option value="plant-a"' not in page.split('aria-label="Apply a threshold"')[1]
    assert bruno.post(ADVISOR, form).status_code == 403
    assert not AuditLog.objects.filter(action="escalation.threshold_apply").exists()
    for device in on_parts:
        device.refresh_from_db()
        assert "escalation_threshold" not in device.desired.get("config", {})


def test_an_admin_applies_the_pick_to_the_sites_devices_and_it_is_audited(
    advised: list[Escalation], on_parts: list[Device], admin_client: Client
) -> None:
    page = body(admin_client.get(ADVISOR, {"model": "parts@1.0.0", "site": "plant-a", "accuracy": "100"}))
    # The lowest threshold above the tenth frame's confidence (0.476) escalates the ten the edge got wrong.
    assert 'name="threshold" value="0.48"' in page

    response = admin_client.post(
        f"{ADVISOR}?model=parts%401.0.0",
        {"model": "parts@1.0.0", "site": "plant-a", "threshold": "0.5", "reason": "advisor pick"},
        follow=True,
    )

    assert response.redirect_chain == [(f"{ADVISOR}?model=parts%401.0.0", 302)]
    assert "Threshold 0.5 sent to 2 devices at Plant A on parts 1.0.0." in body(response)
    for device in on_parts:
        device.refresh_from_db()
        assert device.desired["config"]["escalation_threshold"] == 0.5
    audit = AuditLog.objects.get(action="escalation.threshold_apply")
    assert (audit.actor_label, audit.reason, audit.data["devices"]) == ("alice", "advisor pick", 2)


def test_applying_where_no_device_runs_the_version_shows_the_services_reason(
    advised: list[Escalation], olga: Client
) -> None:
    form = {"model": "parts@1.0.0", "site": "plant-a", "threshold": "0.5"}
    response = olga.post(ADVISOR, form, follow=True)
    assert "No device at plant-a is sent parts 1.0.0." in body(response)
    assert not AuditLog.objects.filter(action="escalation.threshold_apply").exists()


# ---- the dataset export --------------------------------------------------------------------------


def unzip(response: Any) -> tuple[dict[str, Any], list[str]]:
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    return json.loads(archive.read("manifest.json")), sorted(archive.namelist())


@pytest.fixture
def reviewed(escalate: Uploader, site: Site, other_site: Site, admin_user: Any) -> Iterator[list[Escalation]]:
    here = escalate(site, [*disagreeing(2), ("ok", 0.5, "ok", 0.95)])
    there = escalate(other_site, disagreeing(1))
    for row in [*here[:2], *there]:
        review.review(row, label="scratch", actor=admin_user)
    yield here + there


def test_the_export_form_offers_both_layouts_and_the_filters(viewer_client: Client, site: Site) -> None:
    page = body(viewer_client.get(EXPORT))
    assert 'value="imagefolder"' in page and 'value="coco"' in page and '<option value="plant-a">' in page
    assert 'type="datetime-local"' in page and "None" not in page


def test_anyone_signed_in_downloads_an_imagefolder_of_the_reviewed_frames(
    reviewed: list[Escalation], viewer_client: Client
) -> None:
    response = viewer_client.get(EXPORT, {"layout": "imagefolder", "site": "plant-a", "model": "parts@1.0.0"})

    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"].startswith('attachment; filename="escalations-imagefolder-')
    manifest, names = unzip(response)
    assert names == sorted(["manifest.json", *(f"scratch/{r.pk}.jpg" for r in reviewed[:2])])
    assert manifest["filters"]["site"] == "plant-a" and manifest["filters"]["include_agreed"] is False


def test_the_coco_export_with_agreed_frames_names_each_labels_source(
    reviewed: list[Escalation], viewer_client: Client
) -> None:
    response = viewer_client.get(EXPORT, {"layout": "coco", "site": "plant-a", "include_agreed": "on"})
    manifest, names = unzip(response)
    assert "annotations.json" in names and response["X-Edgefleet-Frames"] == "3"
    assert {i["escalation"]: i["label_source"] for i in manifest["items"]} == {
        reviewed[0].pk: "reviewer",
        reviewed[1].pk: "reviewer",
        reviewed[2].pk: "cloud",
    }


@pytest.mark.parametrize(
    "query",
    [
        {"layout": "tar"},
        {"layout": "coco", "site": "nowhere"},
        {"layout": "coco", "since": "2026-12-02T10:00", "until": "2026-12-01T10:00"},
        {"layout": "coco", "since": "yesterday"},
    ],
)
def test_a_bad_export_form_is_shown_again_with_its_errors(viewer_client: Client, site: Site, query: Any) -> None:
    response = viewer_client.get(EXPORT, query)
    assert response.status_code == 400 and response["Content-Type"].startswith("text/html")
    assert 'class="error" role="alert"' in body(response)


def test_an_export_too_large_shows_the_services_reason(
    reviewed: list[Escalation], viewer_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("escalations.export.MAX_FRAMES", 1)
    response = viewer_client.get(EXPORT, {"layout": "imagefolder"})
    assert response.status_code == 400 and "narrow the export to at most 1" in body(response)
