"""Mosquitto's dynamic-security plugin, driven by the control plane over MQTT.

Each device gets a dynsec client (username = device id, password = its
secret, bound to client id = device id) and a role of its own holding exactly
its topics (``fleet.broker.acl``). The binding matters: Mosquitto ends a
session when another connection takes its client id, so without it any
device could disconnect any other (and have its last will announce it
offline) by connecting with its own credentials under the other's id. With
it, such a CONNECT is refused before it touches the other session.
Mosquitto 2.0 has no ``%u`` substitution in dynsec ACLs, hence one role per
device rather than one shared role. Revocation deletes the client: the plugin
kicks a connected session at once and refuses the username from then on.

Commands go to ``$CONTROL/dynamic-security/v1`` as the admin account; the
plugin answers every command, in order, on ``.../response`` (with our
``correlationData`` echoed back), so each call waits for its own answer.
A broker that does not answer in time, refuses the admin account, or rejects
a command raises ``BrokerUnavailable``: enrollment then commits nothing.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from django.conf import settings
from paho.mqtt.enums import CallbackAPIVersion

from fleet.broker import acl
from fleet.broker.base import BrokerUnavailable

log = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"

DEVICE_ROLE_PREFIX = "edgefleet-device-"
BRIDGE_ROLE = "edgefleet-bridge"
DEVICE_TEXT_NAME = "edgefleet device"

# Answers that mean "already as wanted": the calls stay idempotent.
_ALREADY = ("already exists",)
_GONE = ("not found",)


def device_role(device_id: str) -> str:
    return f"{DEVICE_ROLE_PREFIX}{device_id}"


def device_role_acls(device_id: str) -> list[dict[str, Any]]:
    acls: list[dict[str, Any]] = [
        {"acltype": "publishClientSend", "topic": t, "allow": True} for t in acl.device_publish_topics(device_id)
    ]
    acls += [{"acltype": "subscribeLiteral", "topic": t, "allow": True} for t in acl.device_subscribe_topics(device_id)]
    return acls


def bridge_role_acls() -> list[dict[str, Any]]:
    acls: list[dict[str, Any]] = []
    for topic_filter in acl.BRIDGE_FILTERS:
        acls.append({"acltype": "publishClientSend", "topic": topic_filter, "allow": True})
        acls.append({"acltype": "publishClientReceive", "topic": topic_filter, "allow": True})
        acls.append({"acltype": "subscribePattern", "topic": topic_filter, "allow": True})
    # Mosquitto 2.0 checks a shared subscription against the whole
    # ``$share/<group>/...`` filter, so the grant must name that form too.
    for topic_filter in acl.BRIDGE_SHARED_FILTERS:
        acls.append({"acltype": "subscribePattern", "topic": topic_filter, "allow": True})
    return acls


@dataclass(frozen=True)
class Answer:
    command: str
    error: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    def says(self, phrases: Iterable[str]) -> bool:
        return self.error is not None and any(p in self.error.lower() for p in phrases)


class DynsecProvisioner:
    """Sends dynamic-security commands; one short admin connection per call.

    Enrollment and revocation are rare next to device traffic, so a fresh
    connection per call is cheap and leaves no long-lived admin session to
    look after (reconnects, a broker restart between calls).
    """

    def __init__(
        self, url: str, username: str, password: str | None, *, timeout: float = 10.0, remove_batch: int = 200
    ) -> None:
        self.url = url
        self.username = username
        self.password = password
        self.timeout = timeout
        self.remove_batch = remove_batch

    @classmethod
    def from_settings(cls) -> DynsecProvisioner:
        return cls(
            settings.MQTT_URL,
            settings.BROKER_ADMIN_USERNAME or "",
            settings.BROKER_ADMIN_PASSWORD or "",
            timeout=settings.BROKER_ADMIN_TIMEOUT_S,
        )

    # --- the Provisioner protocol ------------------------------------------

    def add_device(self, device_id: str, secret: str) -> None:
        self._upsert(
            device_role(device_id), device_role_acls(device_id), device_id, secret, DEVICE_TEXT_NAME, clientid=device_id
        )

    def remove_device(self, device_id: str) -> None:
        self.remove_devices([device_id])

    def remove_devices(self, device_ids: Iterable[str]) -> None:
        """Delete clients and their roles, ``remove_batch`` per message so each answer stays small.

        The periodic reconciliation covers every revoked device, so one
        connection per device would not fit its time limit on a large fleet.
        """
        ids = list(device_ids)
        for start in range(0, len(ids), self.remove_batch):
            commands: list[dict[str, Any]] = []
            for device_id in ids[start : start + self.remove_batch]:
                # deleteClient kicks a connected session; the role goes with it.
                commands.append({"command": "deleteClient", "username": device_id})
                commands.append({"command": "deleteRole", "rolename": device_role(device_id)})
            for answer in self.send(commands):
                _require(answer, allow=_GONE)

    # --- bootstrap and reconciliation ---------------------------------------

    def ensure_bridge(self, username: str, password: str) -> None:
        """Create or update the bridge's role and client (also rotates its password).

        The bridge is not bound to a client id: several bridges share the
        account, each under its own id (``edgefleet-bridge-<random>``), and
        dynsec binds one exact id per client. Holding the bridge password
        already grants every device's topics, so a binding would protect little.
        """
        self._upsert(BRIDGE_ROLE, bridge_role_acls(), username, password, "edgefleet MQTT bridge")

    def _upsert(
        self, role: str, acls: list[dict[str, Any]], username: str, password: str, textname: str, clientid: str = ""
    ) -> None:
        """Create the role and the client, or bring existing ones to exactly this state.

        An existing client is the normal case for a retried enrollment, a
        secret rotation or a second bootstrap: its password, client id
        binding, roles and ACLs are replaced (not added to, so nothing stale
        survives) and it is enabled. An empty ``clientid`` leaves it unbound.
        """
        answers = self.send(
            [
                {"command": "createRole", "rolename": role, "acls": acls},
                {
                    "command": "createClient",
                    "username": username,
                    "password": password,
                    "clientid": clientid,
                    "textname": textname,
                    "roles": [{"rolename": role}],
                },
            ]
        )
        repairs: list[dict[str, Any]] = []
        if answers[0].says(_ALREADY):
            repairs.append({"command": "modifyRole", "rolename": role, "acls": acls})
        else:
            _require(answers[0])
        if answers[1].says(_ALREADY):
            repairs.append(
                {
                    "command": "modifyClient",
                    "username": username,
                    "password": password,
                    "clientid": clientid,
                    "roles": [{"rolename": role}],
                }
            )
            repairs.append({"command": "enableClient", "username": username})
        else:
            _require(answers[1])
        if repairs:
            for answer in self.send(repairs):
                _require(answer)

    def device_clients(self) -> set[str]:
        """Usernames of the device clients this control plane created (those with a device role)."""
        return set(self._device_client_ids())

    def unbound_device_clients(self) -> set[str]:
        """Device clients not bound to their own client id (created before the binding, or changed by hand)."""
        return {username for username, clientid in self._device_client_ids().items() if clientid != username}

    def bind_devices(self, device_ids: Iterable[str]) -> None:
        """Bind each device's client to client id = device id, ``remove_batch`` per message.

        Only the binding changes (the password stays: the control plane cannot
        rebuild it). Mosquitto disconnects a client whose account is modified;
        a device reconnects at once under its own id, which the binding accepts.
        """
        ids = list(device_ids)
        for start in range(0, len(ids), self.remove_batch):
            commands = [
                {"command": "modifyClient", "username": device_id, "clientid": device_id}
                for device_id in ids[start : start + self.remove_batch]
            ]
            for answer in self.send(commands):
                _require(answer)

    def _device_client_ids(self) -> dict[str, str]:
        """Device client username -> the client id it is bound to ("" when unbound)."""
        clients, roles = self.send(
            [
                {"command": "listClients", "verbose": True, "count": -1, "offset": 0},
                {"command": "listRoles", "verbose": False, "count": -1, "offset": 0},
            ]
        )
        _require(clients)
        _require(roles)
        role_names = {r if isinstance(r, str) else r.get("rolename", "") for r in roles.data.get("roles", [])}
        bound: dict[str, str] = {}
        for client in clients.data.get("clients", []):
            if isinstance(client, str):
                username, clientid = client, ""
            else:
                username, clientid = str(client.get("username", "")), str(client.get("clientid") or "")
            if device_role(username) in role_names:
                bound[username] = clientid
        return bound

    # --- the wire -----------------------------------------------------------

    def send(self, commands: list[dict[str, Any]]) -> list[Answer]:
        """Send ``commands`` in one message and return the plugin's answers, in order."""
        correlation = uuid.uuid4().hex
        for index, command in enumerate(commands):
            command["correlationData"] = f"{correlation}-{index}"
        waiter = _Exchange(correlation, len(commands))
        parts = urlsplit(self.url)
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"edgefleet-admin-{correlation[:12]}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        client.username_pw_set(self.username, self.password)
        if parts.scheme == "mqtts":
            client.tls_set()
        client.on_connect = waiter.on_connect
        client.on_subscribe = waiter.on_subscribe
        client.on_message = waiter.on_message
        client.on_disconnect = waiter.on_disconnect
        where = f"{host}:{port}"
        try:
            client.connect(host, port, keepalive=max(5, int(self.timeout) * 2))
        except OSError as exc:
            raise BrokerUnavailable(f"MQTT broker at {where} is unreachable: {exc}") from exc
        client.loop_start()
        try:
            if not waiter.subscribed.wait(self.timeout):
                raise BrokerUnavailable(
                    f"MQTT broker at {where} did not accept the admin session in {self.timeout:g} s"
                )
            if waiter.failure:
                raise BrokerUnavailable(f"MQTT broker at {where}: {waiter.failure}")
            client.publish(CONTROL_TOPIC, json.dumps({"commands": commands}), qos=1)
            if not waiter.answered.wait(self.timeout):
                raise BrokerUnavailable(
                    waiter.failure
                    or f"MQTT broker at {where} did not answer the dynamic-security commands in {self.timeout:g} s "
                    "(is the dynamic-security plugin loaded?)"
                )
        finally:
            client.disconnect()
            client.loop_stop()
        return waiter.answers()


class _Exchange:
    """Collects the answers to one message of commands (paho network thread)."""

    def __init__(self, correlation: str, count: int) -> None:
        self.correlation = correlation
        self.count = count
        self.subscribed = threading.Event()
        self.answered = threading.Event()
        self.failure: str | None = None
        self._answers: dict[int, Answer] = {}

    def on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.failure = f"the admin account was refused ({reason}); check BROKER_ADMIN_USERNAME/PASSWORD"
            self.subscribed.set()
            return
        client.subscribe(RESPONSE_TOPIC, qos=1)

    def on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        if any(r.is_failure for r in reasons):
            self.failure = f"the admin account may not subscribe to {RESPONSE_TOPIC}"
        self.subscribed.set()

    def on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not self.answered.is_set() and reason.is_failure:
            self.failure = self.failure or f"the broker closed the admin session ({reason})"
            self.subscribed.set()

    def on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(message.payload)
            responses = body["responses"]
        except (ValueError, KeyError, TypeError):
            log.warning("malformed dynamic-security response ignored", extra={"payload": repr(message.payload)[:200]})
            return
        for item in responses if isinstance(responses, list) else []:
            tag = str(item.get("correlationData", "")) if isinstance(item, dict) else ""
            prefix, _, index = tag.rpartition("-")
            if prefix != self.correlation or not index.isdigit():
                continue  # another caller's exchange on the same response topic
            data = item.get("data")
            self._answers[int(index)] = Answer(
                command=str(item.get("command", "")),
                error=item.get("error") or None,
                data=data if isinstance(data, dict) else {},
            )
        if len(self._answers) >= self.count:
            self.answered.set()

    def answers(self) -> list[Answer]:
        return [self._answers[i] for i in range(self.count)]


def _require(answer: Answer, allow: Iterable[str] = ()) -> None:
    if answer.ok or answer.says(allow):
        return
    raise BrokerUnavailable(f"the dynamic-security plugin refused {answer.command}: {answer.error}")
