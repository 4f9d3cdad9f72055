"""Desired documents are bound to their device, expire, are signed once per generation and renewed in time."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from agent.kernel import protocol, verify
from fleet import desired
from fleet.models import Device
from fleet.tasks import reissue_desired
from registry.models import SigningKey
from registry.trust import trust_store

pytestmark = pytest.mark.django_db


@pytest.fixture
def device(enroll_device: Any, site: Any) -> Device:
    return enroll_device(site).device


def stored(device: Device) -> protocol.Desired:
    device.refresh_from_db()
    return protocol.Desired.model_validate(device.desired_document)


def test_a_document_names_its_device_and_site_and_is_signed_once_for_its_generation(device: Device) -> None:
    now = timezone.now()
    generation = desired.issue(device, {"config": {"telemetry_interval_s": 15}}, now=now)

    message = stored(device)
    keyring = verify.Keyring.from_trust_store(trust_store())
    verify.verify_desired(message, keyring, now=now)
    assert (message.device_id, message.site, message.generation) == (device.device_id, "plant-a", generation)
    assert message.issued_at == now and message.expires == now + timedelta(hours=24)
    assert device.desired_expires_at == message.expires
    assert message.config.telemetry_interval_s == 15


def test_documents_close_to_expiry_are_reissued_as_a_new_generation_and_others_are_left(
    enroll_device: Any, site: Any
) -> None:
    now = timezone.now()
    due, fresh, revoked, empty = (enroll_device(site, name=f"cam-{i}").device for i in range(4))
    for device in (due, fresh, revoked):
        desired.issue(device, {"config": {"telemetry_interval_s": 15}}, now=now - timedelta(hours=13))
    desired.issue(fresh, {"config": {"telemetry_interval_s": 20}}, now=now)
    Device.objects.filter(pk=revoked.pk).revoke(now)

    assert desired.reissue_expiring(now=now) == 1

    renewed = stored(due)
    assert renewed.generation == 2 and renewed.issued_at == now
    assert renewed.config.telemetry_interval_s == 15, "re-issuing changes the lifetime, not the content"
    assert stored(fresh).generation == 2 and stored(fresh).issued_at == now
    revoked.refresh_from_db()
    empty.refresh_from_db()
    assert revoked.desired_generation == 1 and empty.desired_generation == 0
    assert desired.reissue_expiring(now=now) == 0, "idempotent"


def test_the_beat_task_reissues_in_chunks_across_the_fleet(enroll_device: Any, site: Any) -> None:
    devices = [enroll_device(site, name=f"cam-{i}").device for i in range(5)]
    old = timezone.now() - timedelta(hours=23)
    for device in devices:
        desired.issue(device, {"config": {}}, now=old)

    assert desired.reissue_expiring(chunk=2) == 5
    assert {stored(d).generation for d in devices} == {2}
    assert reissue_desired() == 0


def test_without_a_signing_key_nothing_is_published_until_one_exists(device: Device, settings: Any) -> None:
    settings.REGISTRY_AUTO_SIGNING_KEY = False
    SigningKey.objects.all().delete()
    generation = desired.issue(device, {"config": {"telemetry_interval_s": 15}})
    device.refresh_from_db()
    assert generation == 1 and device.desired_document == {} and device.desired_expires_at is None

    settings.REGISTRY_AUTO_SIGNING_KEY = True
    assert desired.reissue_expiring() == 1
    assert stored(device).generation == 2 and stored(device).signature is not None


def test_a_stored_document_the_kernel_refuses_is_skipped_loudly_not_retried_into_a_crash(
    enroll_device: Any, site: Any, caplog: Any
) -> None:
    bad, good = enroll_device(site, name="bad").device, enroll_device(site, name="good").device
    old = timezone.now() - timedelta(hours=20)
    desired.issue(good, {"config": {}}, now=old)
    Device.objects.filter(pk=bad.pk).update(desired={"config": {"unknown": 1}}, desired_generation=3)

    assert desired.reissue_expiring() == 1
    assert "desired state not signable" in caplog.text
    assert stored(good).generation == 2
