"""The embedded MQTT broker of the demo: amqtt, checking the control plane's database itself.

No provisioning step is needed: a device connects with its device id and
secret and the broker asks ``DeviceCredential.authenticate``; the bridge
connects with ``MQTT_USERNAME``/``MQTT_PASSWORD``. Topic rights come from
``fleet.broker.acl``, the same rule the dynamic-security provisioner writes
into Mosquitto.

A device must connect under its own device id as client id, as on
Mosquitto (``fleet.broker.dynsec``), and the CONNECT is authenticated before
amqtt lets it touch the session of the client id it names: otherwise one
device could knock another off the broker. The bridge account is not bound
to a client id (several bridges run side by side under their own ids).

amqtt checks credentials only at connect, so a loop re-checks the sessions
that are connected every ``recheck_s`` seconds and drops any whose device or
credential has been revoked since: revocation takes effect within that bound.

amqtt speaks MQTT 3.1.1 only and has no shared subscriptions (the demo sets
``MQTT_SHARED_GROUP=""``). Its own ACL plugin is not used: our plugins below
implement the rule directly, so amqtt's ``acl``/``subscribe-acl`` keys play
no part here.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import ItemsView, Iterator, KeysView, ValuesView
from dataclasses import dataclass
from typing import Any

from amqtt.adapters import ReaderAdapter, WriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action, ListenerConfig
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session
from amqtt.utils import gen_client_id
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, close_old_connections, connections

from core import tokens
from fleet.broker import acl
from fleet.models import DeviceCredential

log = logging.getLogger(__name__)

# Who a session authenticated as, kept in amqtt's per-session attributes.
# Rights are read from here, never from ``session.username``: amqtt copies
# the username of each new CONNECT onto a resumed session.
PRINCIPAL = "edgefleet.principal"
# Set on a session whose CONNECT was authenticated before amqtt used it, so
# amqtt's own (later) authentication step does not ask the database again.
AUTHENTICATED_AT_CONNECT = "edgefleet.authenticated-at-connect"


@dataclass(frozen=True)
class Principal:
    kind: str  # "device", "bridge" or "anonymous"
    name: str = ""
    secret_hash: str = ""


def principal_of(session: Session | None) -> Principal | None:
    if session is None:
        return None
    value = session.attributes.get(PRINCIPAL)
    return value if isinstance(value, Principal) else None


# --- database checks (run in a worker thread: the ORM is synchronous) ----------


def _authenticate_device(device_id: str, secret: str) -> str | None:
    """The hash of ``secret`` if it is a live credential of ``device_id``."""
    close_old_connections()
    device = DeviceCredential.authenticate(device_id, secret)
    return tokens.digest(secret) if device is not None else None


def _live_credentials(secret_hashes: set[str]) -> set[tuple[str, str]]:
    """The (device id, secret hash) pairs among ``secret_hashes`` that are still allowed."""
    close_old_connections()
    rows = DeviceCredential.objects.filter(
        secret_hash__in=secret_hashes, revoked_at__isnull=True, device__revoked_at__isnull=True
    ).values_list("device__device_id", "secret_hash")
    return {(str(device_id), str(secret_hash)) for device_id, secret_hash in rows}


# --- amqtt plugins -----------------------------------------------------------------


class DeviceAuthPlugin(BaseAuthPlugin):
    """Devices by their enrolled credentials, the bridge by its configured password."""

    @dataclass
    class Config:
        bridge_username: str = ""
        bridge_password: str = ""
        allow_anonymous: bool = False

    async def authenticate(self, *, session: Session) -> bool:
        principal = await self._principal(session)
        if principal is None:
            session.attributes.pop(PRINCIPAL, None)
            return False
        session.attributes[PRINCIPAL] = principal
        return True

    async def _principal(self, session: Session) -> Principal | None:
        config: DeviceAuthPlugin.Config = self.config
        if config.allow_anonymous:
            return Principal("anonymous")
        username = session.username
        password = session.password
        if isinstance(password, (bytes, bytearray)):
            password = password.decode("utf-8", "replace")
        if not username or password is None:
            return None
        if config.bridge_username and username == config.bridge_username:
            if hmac.compare_digest(password.encode(), config.bridge_password.encode()):
                return Principal("bridge", username)
            return None
        # A device's credentials are bound to its own client id: under another
        # id (another device's, or the bridge's) the CONNECT would end that
        # client's session.
        if session.client_id != username:
            log.warning(
                "connection refused",
                extra={"username": username, "client_id": session.client_id, "reason": "not its own client id"},
            )
            return None
        # A last will is published without an ACL check once the session
        # ends, so a will on another device's topic is refused here.
        if session.will_flag and not acl.device_may_publish(username, session.will_topic or ""):
            log.warning(
                "connection refused",
                extra={"username": username, "reason": "last will on a topic it may not publish to"},
            )
            return None
        try:
            secret_hash = await sync_to_async(_authenticate_device)(username, password)
        except DatabaseError as exc:
            log.warning(
                "connection refused", extra={"username": username, "reason": "database unavailable", "error": str(exc)}
            )
            return None
        return Principal("device", username, secret_hash) if secret_hash else None


class DeviceTopicPlugin(BaseTopicPlugin):
    """A device's own topics only; the bridge every device's."""

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None
    ) -> bool:
        principal = principal_of(session)
        if principal is None or not topic:
            return False
        if principal.kind == "anonymous":
            return True
        if principal.kind == "bridge":
            return acl.bridge_may(topic)
        if action == Action.PUBLISH:
            return acl.device_may_publish(principal.name, topic)
        # Subscribing and receiving: only its own cloud-to-device topics.
        return acl.device_may_subscribe(principal.name, topic)


# --- the broker ---------------------------------------------------------------------


class _SnapshotDict(dict[str, list[tuple[Session, int]]]):
    """amqtt's subscription table, iterated over a copy of itself and of each list.

    amqtt 0.12 walks ``_subscriptions`` with ``await`` inside the loop (each
    broadcast asks the topic plugins about every receiver; a connecting
    client gets the retained messages of every filter), while other
    coroutines add and remove filters as clients subscribe and leave. Python
    then raises "dictionary changed size during iteration" and the message
    being broadcast reaches none of the receivers left in the loop: about one
    message per connecting agent in the demo. Iterating a snapshot is what a
    receiver that subscribes mid-broadcast would see from a lock anyway.
    """

    def __iter__(self) -> Iterator[str]:
        return iter(list(dict.keys(self)))

    def keys(self) -> KeysView[str]:  # type: ignore[override]
        return dict.copy(self).keys()

    def items(self) -> ItemsView[str, list[tuple[Session, int]]]:  # type: ignore[override]
        return {topic: list(holders) for topic, holders in dict.items(self)}.items()

    def values(self) -> ValuesView[list[tuple[Session, int]]]:  # type: ignore[override]
        return {topic: list(holders) for topic, holders in dict.items(self)}.values()


class IsolatingBroker(Broker):
    """amqtt's broker, with connects authenticated first and every delivery checked against the receiver.

    amqtt 0.12 authenticates a CONNECT only after it has acted on the client
    id it names: a clean-session CONNECT discards that id's session and
    subscriptions, a resuming one copies its will and credentials onto it,
    and a connected session under that id is taken over (its will sent).
    So anyone who knew a device id could disconnect or silence that device
    and have its will announce it offline. Here the CONNECT is authenticated
    (the client id binding included) before any of that, and refused with
    "not authorized" otherwise.

    amqtt 0.12 checks ``Action.RECEIVE`` only for live broadcasts. When a
    client connects it replays retained messages for every filter in the
    broker-wide subscription table, whoever holds it (the bridge's
    ``+/status``, each device's own ``desired``), so a device connecting after
    others received their retained status and desired. Queued messages are
    checked again too, against whoever resumes the session.

    Its subscription table is iterated over snapshots (``_SnapshotDict``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._subscriptions = _SnapshotDict()

    async def _initialize_client_session(
        self, reader: ReaderAdapter, writer: WriterAdapter, remote_address: str, remote_port: int
    ) -> tuple[BrokerProtocolHandler, Session]:
        # amqtt's method with authentication moved in front of the session handling.
        try:
            handler, session = await BrokerProtocolHandler.init_from_connect(reader, writer, self.plugins_manager)
        except MQTTError:
            await writer.close()
            raise
        except NoDataError as exc:
            raise AMQTTError(exc) from exc
        if not await super()._authenticate(session, ListenerConfig()):
            await ConnackPacket.build(0, NOT_AUTHORIZED).to_stream(writer)
            await writer.close()
            raise MQTTError(f"{remote_address}:{remote_port} not authorized (client id {session.client_id!r})")
        session.attributes[AUTHENTICATED_AT_CONNECT] = True

        if session.clean_session:
            if session.client_id:
                await self._delete_session(session.client_id)
            else:
                session.client_id = gen_client_id()
            session.parent = 0
        elif session.client_id in self._sessions:
            existing, _ = self._sessions[session.client_id]
            for name in ("will_flag", "will_message", "will_topic", "will_qos", "keep_alive", "username", "password"):
                setattr(existing, name, getattr(session, name))
            existing.attributes.update(session.attributes)
            session = existing
            session.parent = 1
        else:
            session.parent = 0

        delay = self.config.get("timeout-disconnect-delay", 0)
        if session.keep_alive > 0 and isinstance(delay, int):
            session.keep_alive += delay
        return handler, session

    async def _authenticate(self, session: Session, listener: ListenerConfig) -> bool:
        if session.attributes.pop(AUTHENTICATED_AT_CONNECT, False):
            return True
        return await super()._authenticate(session, listener)

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        topic_filter, qos = subscription
        holders = self._subscriptions.get(topic_filter, [])
        # Only the session's own filters: amqtt also passes everyone else's on connect.
        if not any(holder.client_id == session.client_id for holder, _ in holders):
            return
        handler = self._get_handler(session)
        if handler is None:
            return
        publishes = [
            asyncio.ensure_future(
                handler.mqtt_publish(retained.topic, retained.data, min(qos, retained.qos or qos), retain=True)
            )
            for topic, retained in list(self._retained_messages.items())
            if self._matches(topic, topic_filter)
            and await self._topic_filtering(session, topic=topic, action=Action.RECEIVE)
        ]
        if publishes:
            await asyncio.wait(publishes)

    async def _publish_session_retained_messages(self, session: Session) -> None:
        # What was queued was checked against the session's previous owner;
        # check it again against who is connecting now.
        queued = session.retained_messages
        allowed = []
        while not queued.empty():
            message = queued.get_nowait()
            if await self._topic_filtering(session, topic=message.topic, action=Action.RECEIVE):
                allowed.append(message)
        for message in allowed:
            queued.put_nowait(message)
        await super()._publish_session_retained_messages(session)


@dataclass(frozen=True)
class EmbeddedBrokerConfig:
    bind: str = "127.0.0.1:1883"
    bridge_username: str = ""
    bridge_password: str = ""
    recheck_s: float = 5.0
    # Lets anyone in with every right, like a stock Mosquitto on a laptop.
    # Only tests standing in for such a broker set it; the command never does.
    allow_anonymous: bool = False

    @classmethod
    def from_settings(cls, bind: str) -> EmbeddedBrokerConfig:
        username = settings.MQTT_USERNAME or ""
        password = settings.MQTT_PASSWORD or ""
        if username and not password:
            raise ImproperlyConfigured("MQTT_USERNAME is set but MQTT_PASSWORD (or MQTT_PASSWORD_FILE) is not.")
        return cls(
            bind=bind,
            bridge_username=username,
            bridge_password=password,
            recheck_s=float(settings.EMBEDDED_BROKER_RECHECK_S),
        )

    def amqtt_config(self) -> dict[str, Any]:
        auth = {
            "bridge_username": self.bridge_username,
            "bridge_password": self.bridge_password,
            "allow_anonymous": self.allow_anonymous,
        }
        return {
            "listeners": {"default": {"type": "tcp", "bind": self.bind}},
            "plugins": {
                f"{__name__}.DeviceAuthPlugin": auth,
                f"{__name__}.DeviceTopicPlugin": {},
            },
        }


class EmbeddedBroker:
    def __init__(self, config: EmbeddedBrokerConfig) -> None:
        self.config = config
        self.kicked = 0

    async def serve(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then close every session and the listener."""
        broker = IsolatingBroker(self.config.amqtt_config())
        await broker.start()
        try:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), timeout=self.config.recheck_s)
                except asyncio.TimeoutError:
                    await self.drop_revoked(broker)
        finally:
            await broker.shutdown()
            await sync_to_async(connections.close_all)()

    async def drop_revoked(self, broker: Broker) -> int:
        """Disconnect connected devices whose device or credential is no longer valid."""
        connected = [
            (principal, handler)
            for session, handler in list(broker.sessions.values())
            if session.transitions.is_connected()
            and (principal := principal_of(session)) is not None
            and principal.kind == "device"
        ]
        if not connected:
            return 0
        try:
            live = await sync_to_async(_live_credentials)({p.secret_hash for p, _ in connected})
        except DatabaseError as exc:
            # Keep everyone connected rather than drop the fleet on a database blip.
            log.warning("connected devices not re-checked", extra={"error": str(exc)})
            return 0
        dropped = 0
        for principal, handler in connected:
            if (principal.name, principal.secret_hash) not in live:
                log.info("revoked device disconnected", extra={"username": principal.name})
                # What amqtt does when the socket closes: the will is sent
                # (the device shows offline) and the session ends.
                await handler.handle_connection_closed()
                dropped += 1
        self.kicked += dropped
        return dropped
