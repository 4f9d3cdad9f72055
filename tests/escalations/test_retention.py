"""Retention: each site's frames lose their pixels after its escalation_retention_days; the rows stay, audited."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from core.models import AuditLog
from escalations import retention, tasks
from escalations.models import Escalation
from fleet.models import EscalationPrivacy
from tests.escalations.conftest import URL, device_client, image_bytes, metadata_for, stored_files

pytestmark = pytest.mark.django_db


def age(frame: str, days: float) -> Escalation:
    Escalation.objects.filter(frame_id=frame).update(received_at=timezone.now() - timedelta(days=days))
    return Escalation.objects.get(frame_id=frame)


@pytest.fixture
def frames(upload, enroll_device, site, other_site, media):
    """plant-a (30 days): old, fresh and old metadata-only frames; plant-b (7 days): one of 10 days, one of 3."""
    for name in ("a-old", "a-fresh"):
        assert upload(image=image_bytes(), frame=name).status_code == 201
    site.escalation_privacy = EscalationPrivacy.METADATA
    site.save()
    assert upload(frame="a-meta").status_code == 201
    other_site.escalation_retention_days = 7
    other_site.save()
    other = enroll_device(other_site, name="cam-b")
    for name in ("b-old", "b-fresh"):
        metadata = metadata_for(other.device.device_id, frame=name)
        response = upload(metadata, image=image_bytes(), client=device_client(other))
        assert response.status_code == 201, response.content
    return {
        "a-old": age("a-old", 31),
        "a-fresh": age("a-fresh", 29),
        "a-meta": age("a-meta", 400),
        "b-old": age("b-old", 10),
        "b-fresh": age("b-fresh", 3),
    }


def test_only_frames_past_their_sites_retention_lose_their_pixels(frames, media):
    paths = {name: media / row.image_path for name, row in frames.items() if row.image_path}

    deleted = retention.apply_retention()

    assert deleted == {"plant-a": 1, "plant-b": 1}
    assert not paths["a-old"].exists() and not paths["b-old"].exists()
    assert paths["a-fresh"].exists() and paths["b-fresh"].exists()
    assert stored_files(media) == sorted([paths["a-fresh"], paths["b-fresh"]])
    rows = {row.frame_id: row for row in Escalation.objects.all()}
    assert len(rows) == 5  # rows are kept
    assert rows["a-old"].image_deleted_at is not None and rows["b-old"].image_deleted_at is not None
    assert rows["a-fresh"].image_deleted_at is None and rows["b-fresh"].image_deleted_at is None
    assert rows["a-meta"].image_deleted_at is None and rows["a-meta"].image_path is None


def test_a_run_that_deletes_writes_one_audit_entry_with_counts_per_site(frames):
    retention.apply_retention()

    entry = AuditLog.objects.get(action="escalation.retention")
    assert entry.data["sites"] == {"plant-a": 1, "plant-b": 1} and entry.data["deleted"] == 2
    assert entry.actor is None and entry.actor_label == "system"


def test_a_run_with_nothing_to_delete_is_not_audited(frames):
    retention.apply_retention()
    again = retention.apply_retention()

    assert again == {}
    assert AuditLog.objects.filter(action="escalation.retention").count() == 1


def test_retention_works_in_chunks(frames, site, media):
    for days in (40, 50, 60):
        row = Escalation.objects.get(frame_id="a-fresh")
        # Copies of the fresh frame's file under new rows, all expired.
        copy = media / row.image_path.replace(".jpg", f"-{days}.jpg")
        copy.write_bytes(b"x")
        Escalation.objects.create(
            **{
                f.name: getattr(row, f.name)
                for f in Escalation._meta.concrete_fields
                if f.name not in ("id", "frame_id", "image_path", "received_at")
            },
            frame_id=f"a-copy-{days}",
            image_path=copy.relative_to(media).as_posix(),
            received_at=timezone.now() - timedelta(days=days),
        )

    deleted = retention.apply_retention(chunk=1)

    assert deleted == {"plant-a": 4, "plant-b": 1}
    assert Escalation.objects.filter(image_deleted_at__isnull=False).count() == 5


def test_a_frame_whose_file_is_already_gone_is_still_marked(frames, media):
    (media / frames["a-old"].image_path).unlink()

    assert retention.apply_retention() == {"plant-a": 1, "plant-b": 1}


def test_the_image_of_a_deleted_frame_is_404_but_its_record_stays(frames, token_client):
    retention.apply_retention()
    reader = token_client("read")
    pk = frames["a-old"].pk

    image = reader.get(f"{URL}{pk}/image/")
    record = reader.get(f"{URL}{pk}/")

    assert image.status_code == 404 and image.json()["code"] == "no_image"
    assert "retention" in image.json()["detail"]
    assert record.status_code == 200 and record.json()["image_deleted_at"] and not record.json()["has_image"]


def test_the_beat_runs_the_task_hourly_and_the_task_applies_retention(frames):
    entry = settings.CELERY_BEAT_SCHEDULE["escalations-retention"]
    assert entry == {"task": "escalations.tasks.apply_retention", "schedule": 3600.0}
    assert tasks.apply_retention.name == entry["task"]

    assert tasks.apply_retention.delay().get() == {"plant-a": 1, "plant-b": 1}


def test_a_temporary_file_an_upload_abandoned_is_swept_after_an_hour(frames, media, site):
    folder = (media / frames["a-fresh"].image_path).parent
    abandoned, writing = folder / ".abandoned.jpg.tmp", folder / ".writing.jpg.tmp"
    for path in (abandoned, writing):
        path.write_bytes(b"partial")
    hour_ago = (timezone.now() - timedelta(hours=2)).timestamp()
    os.utime(abandoned, (hour_ago, hour_ago))

    retention.apply_retention()

    assert not abandoned.exists() and writing.exists()
