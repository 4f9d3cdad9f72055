"""deploy/emqx: the device check EMQX runs against the control plane's database, and its topic rule.

EMQX itself is not installed here; what can be run is its SQL query, on the real
schema, as the read-only role deploy/emqx/auth-role.sql creates, and the rule
file compared with fleet/broker/acl.py.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, transaction
from django.db.utils import ProgrammingError
from django.utils import timezone

from agent.kernel import protocol
from fleet.broker import acl
from fleet.models import Site
from tests.paths import ROOT

EMQX = ROOT / "deploy" / "emqx"


def device_query() -> str:
    conf = (EMQX / "emqx.conf").read_text()
    [query] = re.findall(r'^\s*query = "(.*)"$', conf, flags=re.MULTILINE)
    # EMQX binds its placeholders as parameters; so does psycopg.
    return query.replace("${username}", "%(username)s").replace("${clientid}", "%(clientid)s")


def password_hash(username: str, clientid: str) -> str | None:
    with connection.cursor() as cursor:
        cursor.execute(device_query(), {"username": username, "clientid": clientid})
        row = cursor.fetchone()
    return None if row is None else str(row[0])


@pytest.fixture
def postgres(db: None) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("EMQX's authenticator reads PostgreSQL; this run uses SQLite")


def test_emqx_finds_the_hash_of_an_enrolled_devices_secret(postgres: None, site: Site, enroll_device: Any) -> None:
    enrolled = enroll_device(site)
    device_id = enrolled.device.device_id
    # EMQX's sha256 (no salt) of the password the device sends, in hex, is what it compares.
    assert password_hash(device_id, device_id) == hashlib.sha256(enrolled.secret.encode()).hexdigest()


def test_emqx_finds_nothing_for_another_client_id_or_a_revoked_device(
    postgres: None, site: Site, enroll_device: Callable[..., Any]
) -> None:
    enrolled = enroll_device(site)
    device_id = enrolled.device.device_id
    other = enroll_device(site, "cam-2").device.device_id
    assert password_hash(device_id, other) is None, "a device's credentials under another client id"
    assert password_hash("no-such-device", "no-such-device") is None
    enrolled.device.revoked_at = timezone.now()
    enrolled.device.save(update_fields=["revoked_at"])
    assert password_hash(device_id, device_id) is None


def test_the_read_only_role_may_run_the_query_and_read_nothing_else(
    postgres: None, site: Site, enroll_device: Callable[..., Any]
) -> None:
    device_id = enroll_device(site).device.device_id
    role = f"emqx_auth_{secrets.token_hex(4)}"
    script = (EMQX / "auth-role.sql").read_text().replace("emqx_auth", role)
    script = script.replace(":'pw'", "'test-only'").replace(
        "DATABASE edgefleet", f'DATABASE "{connection.settings_dict["NAME"]}"'
    )
    statements = [s.strip() for s in re.sub(r"--[^\n]*", "", script).split(";") if s.strip()]
    # Inside the test's transaction: the role and its grants are rolled back with it.
    with connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)
        cursor.execute(f'SET ROLE "{role}"')
        try:
            assert password_hash(device_id, device_id) is not None
            with pytest.raises(ProgrammingError, match="permission denied"), transaction.atomic():
                cursor.execute("SELECT name FROM fleet_site")
            with pytest.raises(ProgrammingError, match="permission denied"), transaction.atomic():
                cursor.execute("SELECT labels FROM fleet_device")
        finally:
            cursor.execute("RESET ROLE")


def rules() -> list[str]:
    return [line for line in (EMQX / "edgefleet-acl.conf").read_text().splitlines() if line.startswith("{")]


def topics(rule: str) -> list[str]:
    return re.findall(r'"([^"]+)"', rule.split("[", 1)[1])


def test_the_emqx_topic_rule_is_fleet_broker_acl() -> None:
    bridge, publish, subscribe, last = rules()
    assert topics(bridge) == [*acl.BRIDGE_FILTERS, *acl.BRIDGE_SHARED_FILTERS]
    assert topics(publish) == list(acl.device_publish_topics("${username}"))
    assert topics(subscribe) == list(acl.device_subscribe_topics("${username}"))
    assert ", subscribe, " in subscribe and all(f'{{eq, "{t}"}}' in subscribe for t in topics(subscribe))
    assert last == "{deny, all}."
    assert protocol.TOPIC_ROOT == "edgefleet/v1"


def test_the_bridge_rule_names_the_default_bridge_account(settings: Any) -> None:
    # MQTT_USERNAME in deploy/compose and deploy/kubernetes; change both together.
    assert '{username, {re, "^edgefleet-bridge$"}}' in rules()[0]
    for path in (ROOT / "deploy" / "kubernetes" / "config.yaml", ROOT / "deploy" / "compose" / "compose.yaml"):
        assert "MQTT_USERNAME: edgefleet-bridge" in Path(path).read_text()
