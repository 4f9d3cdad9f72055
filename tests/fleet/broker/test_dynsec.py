"""Mosquitto's dynamic security driven by the control plane: enrollment, rotation, bootstrap, stock clients."""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.test import APIClient

from agent.kernel import protocol
from fleet import services
from fleet.broker import BrokerUnavailable, provisioner
from fleet.broker.dynsec import DynsecProvisioner
from fleet.models import Device, EnrollmentToken, Site
from tests.brokers import RunningBroker, free_port, mosquitto_with_dynsec
from tests.fleet.broker.clients import Probe
from tests.fleet.broker.conftest import BRIDGE_PASSWORD, BRIDGE_USERNAME
from tests.paths import ROOT

pytestmark = pytest.mark.integration
# Real commits: the revocation hook runs on commit, and the broker checks what was committed.
with_db = pytest.mark.django_db(transaction=True)


def can_connect(url: str, username: str, password: str, client_id: str = "") -> bool:
    # A device's own id is the only client id its account accepts.
    probe = Probe(url, username, password, client_id=client_id or username)
    try:
        return not probe.connect().is_failure
    finally:
        probe.close()


def enroll_over_api(token: str, name: str = "cam-1") -> Any:
    return APIClient().post("/api/v1/enroll", {"token": token, "name": name}, format="json")


@with_db
def test_a_stock_client_with_one_devices_credentials_is_refused_on_another_devices_topic(
    dynsec_settings: DynsecProvisioner, site: Site, enroll_device: Callable[..., services.Enrollment]
) -> None:
    if shutil.which("mosquitto_pub") is None:
        pytest.skip("mosquitto_pub not installed (package mosquitto-clients)")
    dynsec_settings.ensure_bridge(BRIDGE_USERNAME, BRIDGE_PASSWORD)
    a, b = enroll_device(site, "cam-a"), enroll_device(site, "cam-b")
    bridge = Probe(dynsec_settings.url, BRIDGE_USERNAME, BRIDGE_PASSWORD, client_id="bridge")
    assert not bridge.connect().is_failure
    bridge.subscribe(f"{protocol.TOPIC_ROOT}/#")
    port = dynsec_settings.url.rsplit(":", 1)[1]
    a_id = a.device.device_id
    base = ["mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-i", a_id, "-u", a_id, "-P", a.secret, "-q", "1"]

    # MQTT 5 lets the broker say why: the PUBACK carries "not authorized".
    forged = subprocess.run(
        [*base, "-V", "mqttv5", "-t", protocol.topic(b.device.device_id, "telemetry"), "-m", "forged"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "not authorized" in (forged.stdout + forged.stderr).lower(), forged
    # Its own topic works with the same credentials; mosquitto_pub exits only
    # after the PUBACK, and Mosquitto forwards in order, so the forgery had its chance.
    own = subprocess.run(
        [*base, "-t", protocol.topic(a.device.device_id, "telemetry"), "-m", "own"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert own.returncode == 0, own
    assert bridge.wait_for_message(protocol.topic(a.device.device_id, "telemetry"), b"own")
    assert bridge.received(protocol.topic(b.device.device_id, "telemetry")) == []
    bridge.close()


@with_db
def test_an_mqtt5_device_is_told_its_publish_to_another_device_is_not_authorized(
    dynsec_settings: DynsecProvisioner, site: Site, enroll_device: Callable[..., services.Enrollment]
) -> None:
    a, b = enroll_device(site, "cam-a"), enroll_device(site, "cam-b")
    probe = Probe(dynsec_settings.url, a.device.device_id, a.secret, v5=True)
    assert not probe.connect().is_failure
    assert probe.publish(protocol.topic(b.device.device_id, "status"), b"forged").getName() == "Not authorized"
    assert not probe.publish(protocol.topic(a.device.device_id, "status"), b"own").is_failure
    probe.close()


@with_db
def test_enrollment_fails_cleanly_when_the_broker_is_unreachable_and_the_token_stays_usable(
    settings: Any, site: Site
) -> None:
    settings.BROKER_PROVISIONER = "dynsec"
    settings.MQTT_URL = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there
    settings.BROKER_ADMIN_PASSWORD = "irrelevant"
    provisioner.cache_clear()
    row, token = EnrollmentToken.issue(site)
    try:
        response = enroll_over_api(token)
    finally:
        provisioner.cache_clear()

    assert response.status_code == 503, response.content
    assert response.json()["code"] == "broker_unavailable"
    assert response["Retry-After"] == "30"
    row.refresh_from_db()
    assert row.used_at is None
    assert not Device.objects.exists()


@with_db
def test_an_enrollment_refused_for_want_of_a_broker_succeeds_once_it_is_back(
    dynsec_settings: DynsecProvisioner, settings: Any, site: Site
) -> None:
    url = settings.MQTT_URL
    settings.MQTT_URL = f"mqtt://127.0.0.1:{free_port()}"
    provisioner.cache_clear()
    _, token = EnrollmentToken.issue(site)
    assert enroll_over_api(token).status_code == 503

    settings.MQTT_URL = url
    provisioner.cache_clear()
    response = enroll_over_api(token)
    assert response.status_code == 201, response.content
    body = response.json()
    assert can_connect(url, body["device_id"], body["secret"])


def test_a_wrong_admin_password_is_a_clear_error(mosquitto: RunningBroker) -> None:
    admin = DynsecProvisioner(mosquitto.url, mosquitto.admin_username, "wrong", timeout=5)
    with pytest.raises(BrokerUnavailable, match="admin account was refused"):
        admin.add_device("dev-x", "secret")


def test_adding_a_device_again_replaces_its_secret(dynsec_settings: DynsecProvisioner) -> None:
    dynsec_settings.add_device("dev-rotated", "first-secret")
    dynsec_settings.add_device("dev-rotated", "second-secret")

    assert not can_connect(dynsec_settings.url, "dev-rotated", "first-secret")
    assert can_connect(dynsec_settings.url, "dev-rotated", "second-secret")


def test_removing_a_device_twice_is_harmless(dynsec_settings: DynsecProvisioner) -> None:
    dynsec_settings.add_device("dev-gone", "secret")
    dynsec_settings.remove_device("dev-gone")
    dynsec_settings.remove_device("dev-gone")

    assert not can_connect(dynsec_settings.url, "dev-gone", "secret")
    assert "dev-gone" not in dynsec_settings.device_clients()


@with_db
def test_the_bridge_may_subscribe_through_a_shared_subscription_and_publish_retained_desired(
    dynsec_settings: DynsecProvisioner, site: Site, enroll_device: Callable[..., services.Enrollment]
) -> None:
    dynsec_settings.ensure_bridge(BRIDGE_USERNAME, BRIDGE_PASSWORD)
    a = enroll_device(site, "cam-a")
    bridge = Probe(dynsec_settings.url, BRIDGE_USERNAME, BRIDGE_PASSWORD, client_id="bridge")
    assert not bridge.connect().is_failure
    assert not bridge.subscribe(f"$share/edgefleet-bridge/{protocol.TOPIC_ROOT}/+/telemetry").is_failure
    bridge.publish(protocol.topic(a.device.device_id, "desired"), b"plan", retain=True)
    device = Probe(dynsec_settings.url, a.device.device_id, a.secret)
    assert not device.connect().is_failure
    device.subscribe(protocol.topic(a.device.device_id, "desired"))
    assert device.wait_for_message(protocol.topic(a.device.device_id, "desired"), b"plan")
    device.publish(protocol.topic(a.device.device_id, "telemetry"), b"t")
    assert bridge.wait_for_message(protocol.topic(a.device.device_id, "telemetry"), b"t")
    device.close()
    bridge.close()


@with_db
def test_bootstrap_creates_the_bridge_and_removes_revoked_and_unknown_devices(
    dynsec_settings: DynsecProvisioner, settings: Any, site: Site, enroll_device: Callable[..., services.Enrollment]
) -> None:
    settings.MQTT_USERNAME, settings.MQTT_PASSWORD = BRIDGE_USERNAME, BRIDGE_PASSWORD
    kept, revoked = enroll_device(site, "cam-kept"), enroll_device(site, "cam-revoked")
    # Revoked while the broker was down: the database knows, the broker not yet.
    settings.BROKER_PROVISIONER = "none"
    provisioner.cache_clear()
    services.revoke_device(Device.objects.get(pk=revoked.device.pk), actor=None, reason="test")
    dynsec_settings.add_device("dev-orphan", "from-a-rolled-back-enrollment")
    lost = Device.objects.create(site=site, name="cam-lost")  # enrolled, but the broker lost it

    out, err = io.StringIO(), io.StringIO()
    call_command("broker_bootstrap", stdout=out, stderr=err)

    assert can_connect(dynsec_settings.url, BRIDGE_USERNAME, BRIDGE_PASSWORD)
    assert dynsec_settings.device_clients() == {kept.device.device_id}
    assert can_connect(dynsec_settings.url, kept.device.device_id, kept.secret)
    assert not can_connect(dynsec_settings.url, revoked.device.device_id, revoked.secret)
    assert f"{lost.device_id} is enrolled but has no broker account" in err.getvalue()
    assert "1 in step, 2 removed, 1 need re-enrollment" in out.getvalue()
    # A second run finds nothing more to do.
    out = io.StringIO()
    call_command("broker_bootstrap", stdout=out, stderr=io.StringIO())
    assert "1 in step, 0 removed, 1 need re-enrollment" in out.getvalue()


@with_db
def test_bootstrap_dry_run_changes_nothing(dynsec_settings: DynsecProvisioner, settings: Any) -> None:
    settings.MQTT_USERNAME, settings.MQTT_PASSWORD = BRIDGE_USERNAME, BRIDGE_PASSWORD
    dynsec_settings.add_device("dev-orphan", "secret")

    out = io.StringIO()
    call_command("broker_bootstrap", "--dry-run", stdout=out, stderr=io.StringIO())

    assert "would remove dev-orphan" in out.getvalue()
    assert dynsec_settings.device_clients() == {"dev-orphan"}
    assert not can_connect(dynsec_settings.url, BRIDGE_USERNAME, BRIDGE_PASSWORD)


def test_bootstrap_without_an_admin_password_says_so(settings: Any) -> None:
    settings.BROKER_ADMIN_PASSWORD = None
    with pytest.raises(CommandError, match="BROKER_ADMIN_PASSWORD"):
        call_command("broker_bootstrap")


def test_bootstrap_against_an_unreachable_broker_says_so(settings: Any) -> None:
    settings.BROKER_ADMIN_PASSWORD = "pw"
    settings.MQTT_URL = f"mqtt://127.0.0.1:{free_port()}"
    settings.BROKER_ADMIN_TIMEOUT_S = 2
    with pytest.raises(CommandError, match="unreachable"):
        call_command("broker_bootstrap", "--no-bridge")


def test_the_shipped_mosquitto_config_runs_with_device_accounts(tmp_path: Path) -> None:
    shipped = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
    with mosquitto_with_dynsec(tmp_path, base_config=shipped) as running:
        admin = DynsecProvisioner(running.url, running.admin_username, running.admin_password, timeout=5)
        admin.add_device("dev-shipped", "secret")
        assert can_connect(running.url, "dev-shipped", "secret")
        assert not can_connect(running.url, "dev-shipped", "wrong")


def test_many_devices_are_removed_in_batches(mosquitto: RunningBroker) -> None:
    admin = DynsecProvisioner(mosquitto.url, mosquitto.admin_username, mosquitto.admin_password, remove_batch=2)
    ids = [f"dev-batch-{n}" for n in range(5)]
    for device_id in ids:
        admin.add_device(device_id, "secret")

    admin.remove_devices([*ids, "dev-never-existed"])

    assert admin.device_clients() == set()
    assert not can_connect(mosquitto.url, ids[-1], "secret")


@with_db
def test_bootstrap_binds_devices_enrolled_before_the_client_id_binding(
    dynsec_settings: DynsecProvisioner, site: Site, enroll_device: Callable[..., services.Enrollment]
) -> None:
    old = enroll_device(site, "cam-old")
    old_id = old.device.device_id
    # As enrollment left it before the binding: the client accepts any client id.
    dynsec_settings.send([{"command": "modifyClient", "username": old_id, "clientid": ""}])
    assert dynsec_settings.unbound_device_clients() == {old_id}
    assert can_connect(dynsec_settings.url, old_id, old.secret, client_id="someone-else")

    out = io.StringIO()
    call_command("broker_bootstrap", "--no-bridge", stdout=out, stderr=io.StringIO())

    assert f"bound {old_id} to its own client id" in out.getvalue()
    assert dynsec_settings.unbound_device_clients() == set()
    assert not can_connect(dynsec_settings.url, old_id, old.secret, client_id="someone-else")
    assert can_connect(dynsec_settings.url, old_id, old.secret), "the password was kept"


def test_a_new_device_is_bound_to_its_own_client_id(dynsec_settings: DynsecProvisioner) -> None:
    dynsec_settings.add_device("dev-bound", "secret")
    dynsec_settings.add_device("dev-other", "secret")

    assert can_connect(dynsec_settings.url, "dev-bound", "secret")
    assert not can_connect(dynsec_settings.url, "dev-bound", "secret", client_id="dev-other")
    assert not can_connect(dynsec_settings.url, "dev-bound", "secret", client_id="dev-bound-doctor")
    assert dynsec_settings.unbound_device_clients() == set()
