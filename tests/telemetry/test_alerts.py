"""Alert rules: each opens when its condition holds and resolves by itself when it clears."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from django.core import mail
from django.utils import timezone

from core.models import AuditLog
from fleet.models import Device, Site
from telemetry import alerts, drift, notify
from telemetry.models import Alert, AlertRule, DeviceClock, NotificationChannel, Quarantine
from tests.telemetry.helpers import alive, recent_windows
from tests.telemetry.test_drift import reference

pytestmark = pytest.mark.django_db

NOW = timezone.now()


@pytest.fixture
def fleet(site: Site, enroll_device: Callable[..., Any]) -> list[Device]:
    """Six healthy peers of one hardware profile on one model version."""
    devices = [enroll_device(site, name=f"cam-{i}", hardware_profile="jetson-orin-nano").device for i in range(6)]
    for i, device in enumerate(devices):
        alive(device, NOW, cpu_freq_max_mhz=1500.0)
        recent_windows(device, NOW, seed=i)
    reference()
    return devices


@pytest.fixture
def immediate() -> None:
    """Durations to zero, as an operator may set per rule: these tests are about conditions."""
    alerts.ensure_rules()
    AlertRule.objects.update(duration_s=0)


Setup = Callable[[Device], Any]


def heartbeat(**values: Any) -> tuple[Setup, Setup]:
    return (
        lambda d: alive(d, NOW, cpu_freq_max_mhz=1500.0, **values),
        lambda d: alive(d, NOW, cpu_freq_max_mhz=1500.0),
    )


def silent(device: Device) -> None:
    Device.objects.filter(pk=device.pk).update(last_seen=NOW - timedelta(minutes=10))


def windows(**figures: Any) -> tuple[Setup, Setup]:
    return (lambda d: recent_windows(d, NOW, seed=42, **figures), lambda d: recent_windows(d, NOW, seed=42))


def reported_fallback(on: bool) -> Setup:
    return lambda d: Device.objects.filter(pk=d.pk).update(reported={"phase": "active", "fallback": on})


def quarantined(device: Device) -> None:
    Quarantine.note("rollups", f"telemetry_record:{device.pk}", "schema", "window.frames: too large", device.pk)


def clock_ahead(device: Device) -> None:
    DeviceClock.observe(device.pk, NOW + timedelta(hours=2), NOW, 3)


def clock_right_for_an_hour(device: Device) -> None:
    DeviceClock.objects.filter(device=device).update(observed_at=NOW - timedelta(hours=1, seconds=1))


CASES: dict[str, tuple[Setup, Setup]] = {
    "offline": (silent, lambda d: alive(d, NOW)),
    "temperature_high": heartbeat(temperature_c=86.0),
    "cpu_throttled": heartbeat(cpu_freq_mhz=900.0),
    "disk_full": heartbeat(disk_percent=96.5),
    "outbox_backlog": heartbeat(outbox_depth=25_000),
    "fallback_active": (reported_fallback(True), reported_fallback(False)),
    "desired_expired": (
        lambda d: Device.objects.filter(pk=d.pk).update(reported={"phase": "active", "desired_expired": True}),
        lambda d: Device.objects.filter(pk=d.pk).update(reported={"phase": "active", "desired_expired": False}),
    ),
    "confidence_drift": windows(confidence=(3, 2)),
    "class_mix_drift": windows(weights=(0.5, 0.5)),
    "latency_outlier": windows(latency_ms=80.0),
    "confidence_outlier": windows(confidence=(2, 2)),
    "escalation_outlier": windows(escalation_rate=0.4),
    # Dealt with: the operator deletes the quarantined row.
    "quarantined": (quarantined, lambda d: Quarantine.objects.filter(device=d).delete()),
    "clock_skew": (clock_ahead, clock_right_for_an_hour),
}


# Rules an app above telemetry registers, each with its own test there.
REGISTERED_ELSEWHERE = {"cloud_fallback_disagreement": "tests/escalations/test_fallback_health.py"}


def test_every_default_rule_has_a_case_here() -> None:
    assert set(CASES) == set(alerts.DEFAULT_RULES) - set(REGISTERED_ELSEWHERE)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_each_rule_opens_and_resolves_when_the_condition_clears(
    kind: str, fleet: list[Device], immediate: None
) -> None:
    target = fleet[0]
    cause, cure = CASES[kind]
    alerts.evaluate(NOW)
    assert not Alert.objects.filter(state="open").exists(), "a healthy fleet raises nothing"

    cause(target)
    alerts.evaluate(NOW)
    (alert,) = Alert.objects.filter(rule__kind=kind)
    assert (alert.device_id, alert.state) == (target.pk, "open")
    assert alert.opened_at == NOW and alert.value is not None
    # A shift can meet several rules (drift and peer outlier), but only on the sick device.
    assert set(Alert.objects.exclude(state="resolved").values_list("device", flat=True)) == {target.pk}

    cure(target)
    alerts.evaluate(NOW)
    alert.refresh_from_db()
    assert alert.state == "resolved" and alert.resolved_at == NOW
    assert list(AuditLog.objects.filter(data__alert=alert.pk).order_by("id").values_list("action", flat=True)) == [
        "alert.opened",
        "alert.resolved",
    ]


def test_a_condition_must_last_the_rules_duration_before_the_alert_opens(fleet: list[Device]) -> None:
    alerts.ensure_rules()
    AlertRule.objects.filter(kind="temperature_high").update(duration_s=300)
    alive(fleet[0], NOW, temperature_c=90.0)
    alerts.evaluate(NOW)
    assert Alert.objects.get(rule__kind="temperature_high").state == "pending"
    for device in fleet:
        alive(device, NOW + timedelta(seconds=301), temperature_c=90.0 if device == fleet[0] else 50.0)
    alerts.evaluate(NOW + timedelta(seconds=301))
    assert Alert.objects.get(rule__kind="temperature_high").state == "open"


def test_a_blip_shorter_than_the_duration_is_never_announced(fleet: list[Device]) -> None:
    alerts.ensure_rules()
    AlertRule.objects.filter(kind="temperature_high").update(duration_s=300)
    alive(fleet[0], NOW, temperature_c=90.0)
    alerts.evaluate(NOW)
    alive(fleet[0], NOW, temperature_c=60.0)
    alerts.evaluate(NOW)
    assert not Alert.objects.filter(rule__kind="temperature_high").exists()
    assert not AuditLog.objects.filter(action__startswith="alert.").exists()


def test_a_rule_threshold_overridden_in_the_database_wins(fleet: list[Device], immediate: None) -> None:
    AlertRule.objects.filter(kind="temperature_high").update(threshold=60.0)
    alive(fleet[0], NOW, temperature_c=65.0)
    alerts.evaluate(NOW)
    assert Alert.objects.get(rule__kind="temperature_high").state == "open"


def test_evaluating_twice_changes_nothing_the_second_time(fleet: list[Device], immediate: None) -> None:
    silent(fleet[0])
    first, second = alerts.evaluate(NOW), alerts.evaluate(NOW)
    assert (first.opened, second.opened, second.resolved) == (1, 0, 0)
    assert Alert.objects.count() == 1


def test_an_acknowledged_alert_still_resolves_when_the_condition_clears(
    fleet: list[Device], admin_user: Any, immediate: None
) -> None:
    silent(fleet[0])
    alerts.evaluate(NOW)
    alert = Alert.objects.get()
    assert alert.acknowledge(admin_user, note="truck on its way")
    assert not alert.acknowledge(admin_user), "acknowledging twice is refused"
    alive(fleet[0], NOW)
    alerts.evaluate(NOW)
    alert.refresh_from_db()
    assert (alert.state, alert.acknowledged_by) == ("resolved", "alice")
    assert AuditLog.objects.filter(action="alert.acknowledge", reason="truck on its way", actor=admin_user).exists()


# --- notification ------------------------------------------------------------


class Receiver(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]] = []
    status = 200

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.received.append((dict(self.headers), body))
        self.send_response(Receiver.status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[str]:
    Receiver.received, Receiver.status = [], 200
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook"
    server.shutdown()


def test_an_opened_alert_is_posted_signed_to_webhooks_and_mailed(
    fleet: list[Device], immediate: None, webhook: str, django_capture_on_commit_callbacks: Any
) -> None:
    NotificationChannel.objects.create(name="ops", kind="webhook", url=webhook, secret="s3cret")
    NotificationChannel.objects.create(name="mail", kind="email", recipients=["ops@example.com"])
    NotificationChannel.objects.create(name="pager", kind="webhook", url=webhook, secret="x", min_severity="critical")
    alive(fleet[0], NOW, temperature_c=95.0)
    with django_capture_on_commit_callbacks(execute=True):
        alerts.evaluate(NOW)
    assert len(Receiver.received) == 1, "the critical-only channel is not told about a warning"
    headers, body = Receiver.received[0]
    assert notify.verify("s3cret", headers["X-Edgefleet-Timestamp"], body, headers["X-Edgefleet-Signature"])
    assert not notify.verify("wrong", headers["X-Edgefleet-Timestamp"], body, headers["X-Edgefleet-Signature"])
    assert not notify.verify("s3cret", headers["X-Edgefleet-Timestamp"], body + b" ", headers["X-Edgefleet-Signature"])
    document = json.loads(body)
    assert document["event"] == "opened" and document["alert"]["rule"] == "temperature_high"
    assert document["alert"]["device"] == fleet[0].device_id and document["alert"]["value"] == 95.0
    (message,) = mail.outbox
    assert "temperature_high opened on cam-0" in message.subject and message.to == ["ops@example.com"]


def test_an_old_signature_is_refused() -> None:
    stamp = str(int(datetime(2020, 1, 1).timestamp()))
    assert not notify.verify("k", stamp, b"{}", notify.sign("k", stamp, b"{}"))


def test_a_failing_webhook_raises_so_the_task_retries(fleet: list[Device], immediate: None, webhook: str) -> None:
    Receiver.status = 500
    channel = NotificationChannel.objects.create(name="ops", kind="webhook", url=webhook, secret="s")
    silent(fleet[0])
    alerts.evaluate(NOW)
    with pytest.raises(OSError):
        notify.deliver(channel, notify.payload(Alert.objects.get(), "opened"))


def test_a_channel_without_what_it_needs_is_refused() -> None:
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError, match="secret"):
        NotificationChannel(name="x", kind="webhook", url="https://example.com/h").full_clean()
    with pytest.raises(ValidationError, match="addresses"):
        NotificationChannel(name="y", kind="email", recipients="ops@example.com").full_clean()


def test_drift_thresholds_are_the_documented_ones() -> None:
    assert (drift.WATCH, drift.ALERT) == (0.1, 0.25)
    assert alerts.DEFAULT_RULES["confidence_drift"].threshold == drift.ALERT


def test_fallback_is_judged_by_the_newest_minute_not_by_the_whole_hour(fleet: list[Device], immediate: None) -> None:
    device = fleet[0]
    # The device ran the fallback until its first model arrived, twenty minutes ago...
    before = recent_windows(device, NOW, seed=7, fallback=True, minutes_ago=20)
    assert before.fallback_windows == 1
    alerts.evaluate(NOW - timedelta(minutes=19))
    assert Alert.objects.get(rule__kind="fallback_active").state == "open"
    # ...and has run its real model since: the newest minute has no fallback window.
    before.pk = None
    before.bucket = (NOW - timedelta(minutes=1)).replace(second=0, microsecond=0)
    before.fallback_windows = 0
    before.save()

    alerts.evaluate(NOW)

    assert Alert.objects.get(rule__kind="fallback_active").state == "resolved"


def test_a_rules_condition_reads_with_its_own_threshold_in_place_of_n() -> None:
    assert AlertRule(threshold=80.0, description="Temperature at or above N degrees C").condition == (
        "Temperature at or above 80 degrees C"
    )
    assert AlertRule(threshold=3.5, description="Mean confidence robust z-score at or below -N").condition == (
        "Mean confidence robust z-score at or below -3.5"
    )
    assert AlertRule(threshold=1, description="N or more rows quarantined; None of the NaN").condition == (
        "1 or more rows quarantined; None of the NaN"
    )
