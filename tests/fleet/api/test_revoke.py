"""POST /api/v1/devices/{id}/revoke/: the revocation stands even when the task queue is down."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
from kombu.exceptions import OperationalError
from rest_framework.test import APIClient

from core.models import AuditLog
from fleet import tasks
from fleet.models import Device, DeviceCredential, Site

# The revocation's follow-up task is queued when its transaction commits: these tests commit.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def device(enroll_device: Callable[..., Any], site: Site) -> Device:
    return enroll_device(site).device


def revoke(client: APIClient, device: Device) -> Any:
    return client.post(f"/api/v1/devices/{device.device_id}/revoke/", {"reason": "stolen"}, format="json")


def test_it_queues_the_broker_removal(token_client: Callable[..., APIClient], device: Device) -> None:
    with mock.patch.object(tasks.reconcile_broker, "delay", autospec=True) as delay:
        response = revoke(token_client("fleet"), device)
    assert response.status_code == 200, response.content
    assert response.json()["revoked"] is True and response.json()["broker_reconciliation"] == "queued"
    delay.assert_called_once_with(device.pk)


def test_it_answers_success_when_the_task_queue_refuses_the_broker_removal(
    token_client: Callable[..., APIClient], device: Device, caplog: pytest.LogCaptureFixture
) -> None:
    refused = OperationalError("[Errno 111] Connection refused")
    with mock.patch.object(tasks.reconcile_broker, "delay", autospec=True, side_effect=refused) as delay:
        response = revoke(token_client("fleet"), device)
    delay.assert_called_once_with(device.pk)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["revoked"] is True and body["revoked_at"] and body["broker_reconciliation"] == "pending"
    row = Device.objects.get(pk=device.pk)
    assert row.is_revoked
    assert not DeviceCredential.objects.filter(device=row, revoked_at__isnull=True).exists()
    assert AuditLog.objects.filter(action="device.revoke").count() == 1
    assert "periodic reconciliation repeats it" in caplog.text


def test_the_periodic_reconciliation_removes_a_device_whose_removal_was_never_queued(
    token_client: Callable[..., APIClient], device: Device
) -> None:
    refused = OperationalError("[Errno 111] Connection refused")
    with mock.patch.object(tasks.reconcile_broker, "delay", autospec=True, side_effect=refused):
        assert revoke(token_client("fleet"), device).json()["broker_reconciliation"] == "pending"
    with mock.patch.object(tasks, "provisioner", autospec=True) as provisioner:
        # What Celery beat runs every few minutes: no device named, every revoked one.
        assert tasks.reconcile_broker() == 1
    provisioner.return_value.remove_devices.assert_called_once_with([device.device_id])
