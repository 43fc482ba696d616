"""The built-in MQTT broker: amqtt, with the registry's authentication and topic ACL.

`FleetBroker` is amqtt 0.12.1's Broker with some internals replaced, each for a reason
measured on a fleet of thousands of sessions (amqtt is pinned exactly for this):

* authentication runs before a client can take over an existing session, so a CONNECT
  with wrong credentials cannot kick a live device off (upstream attaches the session first,
  and for a clean session deletes the live one's subscriptions before it authenticates);
* a session's new/connected/disconnected states are a small object, not a
  `transitions.Machine` built per CONNECT (a third of the broker's connect cost);
* no per-subscribe debug log of every subscription in the broker (upstream formats it
  whatever the log level: O(all sessions) per SUBSCRIBE);
* authentication and topic checks call the plugins directly instead of through one task per
  plugin per check;
* no keepalive timers in the broker's protocol handler, whose timeout handlers do nothing;
* plugin events call the handlers in line, and queued messages are delivered without a task
  and an asyncio.wait each;
* a published message is matched only against the subscriptions that can match it (an
  index by literal topic prefix) instead of every subscription of every client;
* a client's subscriptions are tracked per client, so connect and disconnect cost O(its own
  subscriptions), not O(all subscriptions);
* retained messages are offered to a resumed session for its own subscriptions only.

And two process-wide settings, made when a FleetBroker is built, because a broker process is
one that holds thousands of connections: asyncio's TLS transport reads into a 32 KiB buffer
instead of a zero-filled 256 KiB one per connection (most of amqtt's ~330 KiB per TLS
connection, and a tenth of its CPU per connect), and the cyclic garbage collector runs its
young generation every 5,000 allocations instead of 700 and considers a full collection
after 100 middle-generation ones instead of 10 (with thousands of live sessions, amqtt's
per-packet tasks otherwise trigger full collections over every session, each pausing the
broker for a quarter second at 5,000 sessions: a fifth of its CPU during a connect storm).

Everything else (the codec, sessions, keepalive, QoS flows) is amqtt's own.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import contextlib
import gc
import logging
import ssl
from collections import defaultdict
from pathlib import Path
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import AMQTTError, BrokerError, MQTTError, NoDataError
from amqtt.events import BrokerEvents, MQTTEvents
from amqtt.mqtt.connack import (
    BAD_USERNAME_PASSWORD,
    IDENTIFIER_REJECTED,
    UNACCEPTABLE_PROTOCOL_VERSION,
    ConnackPacket,
)
from amqtt.mqtt.connect import ConnectPacket
from amqtt.mqtt.constants import QOS_0
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import Session
from amqtt.utils import gen_client_id
from transitions import MachineError

from harness.broker.plugins import (
    BrokerHooks,
)
from harness.platform.identities import Identities

log = logging.getLogger("fleetrig.broker")

KEEPALIVE = "fleetrig.keepalive"


class _SessionStates:
    """The part of amqtt's per-session `transitions.Machine` that amqtt uses, at a fraction of the cost.

    A session moves new -> connected <-> disconnected; `connect` from connected raises
    MachineError like the machine does, `disconnect` is allowed from every state, and the
    session's enter callbacks run as the machine would run them.
    """

    __slots__ = ("_session", "state")

    def __init__(self, session: Session) -> None:
        self._session = session
        self.state = "new"

    def connect(self) -> bool:
        if self.state == "connected":
            raise MachineError("Can't trigger event connect from state connected!")
        self.state = "connected"
        self._session._on_enter_connected()
        return True

    def disconnect(self) -> bool:
        self.state = "disconnected"
        self._session._on_enter_disconnected()
        return True

    def is_new(self) -> bool:
        return self.state == "new"

    def is_connected(self) -> bool:
        return self.state == "connected"

    def is_disconnected(self) -> bool:
        return self.state == "disconnected"


class FleetSession(Session):
    """amqtt's Session with the light state object above."""

    def _init_states(self) -> None:
        self.transitions = _SessionStates(self)  # type: ignore[assignment]


async def _read_connect(
    reader: Any, writer: Any, plugins_manager: Any
) -> tuple[BrokerProtocolHandler, FleetSession]:
    """amqtt 0.12.1's BrokerProtocolHandler.init_from_connect, making a FleetSession."""
    connect = await ConnectPacket.from_stream(reader)
    await plugins_manager.fire_event(MQTTEvents.PACKET_RECEIVED, packet=connect)
    if connect.variable_header is None:
        raise MQTTError("CONNECT packet: variable header not initialized.")
    if connect.payload is None:
        raise MQTTError("CONNECT packet: payload not initialized.")
    if connect.payload.client_id is None:
        raise MQTTError("[[MQTT-3.1.3-3]] : Client identifier must be present")
    payload = connect.payload
    if connect.variable_header.will_flag and (payload.will_topic is None or payload.will_message is None):
        raise MQTTError("Will flag set, but will topic/message not present in payload")
    if connect.variable_header.reserved_flag:
        raise MQTTError("[MQTT-3.1.2-3] CONNECT reserved flag must be set to 0")
    if connect.proto_name != "MQTT":
        raise MQTTError(f'[MQTT-3.1.2-1] Incorrect protocol name: "{connect.proto_name}"')
    remote_address = remote_port = None
    remote_info = writer.get_peer_info()
    if remote_info is not None:
        remote_address, remote_port = remote_info
        connack = None
        error_msg = None
        if connect.proto_level != 4:
            error_msg = f"Invalid protocol from {remote_address}:{remote_port}: {connect.proto_level}"
            connack = ConnackPacket.build(0, UNACCEPTABLE_PROTOCOL_VERSION)
        elif not connect.username_flag and connect.password_flag:
            connack = ConnackPacket.build(0, BAD_USERNAME_PASSWORD)
        elif connect.username_flag and connect.username is None:
            error_msg = f"Invalid username from {remote_address}:{remote_port}"
            connack = ConnackPacket.build(0, BAD_USERNAME_PASSWORD)
        elif connect.password_flag and connect.password is None:
            error_msg = f"Invalid password from {remote_address}:{remote_port}"
            connack = ConnackPacket.build(0, BAD_USERNAME_PASSWORD)
        elif connect.clean_session_flag is False and connect.payload.client_id_is_random:
            error_msg = f"[MQTT-3.1.3-8] [MQTT-3.1.3-9] {remote_address}:{remote_port}: No client Id provided"
            connack = ConnackPacket.build(0, IDENTIFIER_REJECTED)
        if connack is not None:
            await plugins_manager.fire_event(MQTTEvents.PACKET_SENT, packet=connack)
            await connack.to_stream(writer)
            await writer.close()
            raise MQTTError(error_msg) from None

    session = FleetSession()
    session.client_id = connect.client_id
    session.clean_session = connect.clean_session_flag
    session.will_flag = connect.will_flag
    session.will_retain = connect.will_retain_flag
    session.will_qos = connect.will_qos
    session.will_topic = connect.will_topic
    session.will_message = connect.will_message
    session.username = connect.username
    session.password = connect.password
    session.remote_address = remote_address
    session.remote_port = remote_port
    session.ssl_object = writer.get_ssl_info()
    session.keep_alive = max(connect.keep_alive, 0)
    return BrokerProtocolHandler(plugins_manager), session


def _prefix_key(topic_filter: str) -> str:
    """The literal levels of a filter before its first wildcard: its key in the index."""
    levels = []
    for level in topic_filter.split("/"):
        if level in ("+", "#"):
            break
        levels.append(level)
    return "/".join(levels)


#: asyncio's TLS read buffer per connection (its default is 256 KiB, zero-filled at connect).
TLS_READ_BUFFER = 32 * 1024
#: Young-generation threshold of the cyclic garbage collector in a broker process (default 700).
GC_YOUNG_THRESHOLD = 5_000
#: Middle-generation collections between full ones (default 10).
GC_OLD_THRESHOLD = 100


def tune_process_for_connections() -> None:
    """The process-wide settings described in the module docstring; only ever lowers the cost."""
    if asyncio.sslproto.SSLProtocol.max_size > TLS_READ_BUFFER:
        asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER
    young, middle, old = gc.get_threshold()
    if 0 < young < GC_YOUNG_THRESHOLD:
        gc.set_threshold(GC_YOUNG_THRESHOLD, middle, max(old, GC_OLD_THRESHOLD))


class FleetBroker(Broker):
    """amqtt's Broker, scaled for fleets and wired to the platform (see the module docstring)."""

    def __init__(self, config: dict[str, Any], hooks: BrokerHooks) -> None:
        tune_process_for_connections()
        super().__init__(config)
        self.hooks = hooks
        self._index: dict[str, set[str]] = defaultdict(set)
        self._client_filters: dict[str, set[str]] = defaultdict(set)
        self._topic_filtering_enabled = self.plugins_manager.is_topic_filtering_enabled()
        self._direct_plugin_events()

    # -- TLS ----------------------------------------------------------------------------------

    @staticmethod
    def _create_ssl_context(listener: Any) -> ssl.SSLContext:  # type: ignore[override]
        ctx = Broker._create_ssl_context(listener)
        # No TLS 1.3 session tickets: devices do not resume sessions (a device's second
        # connection must show its certificate), and each ticket costs the broker an encryption
        # and a record per connect, and the client a session object it keeps.
        ctx.num_tickets = 0
        return ctx

    # -- addresses ----------------------------------------------------------------------------

    def bound_port(self, listener: str) -> int:
        server = self._servers[listener].instance
        return int(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    # -- session control used by the platform -------------------------------------------------

    async def drop(self, client_id: str) -> bool:
        """Close a client's live connection (disposal, reissue); True if there was one."""
        entry = self._sessions.get(client_id)
        if entry is None or entry[0].transitions.state != "connected":
            return False
        await entry[1].handle_connection_closed()
        return True

    def is_connected(self, client_id: str) -> bool:
        entry = self._sessions.get(client_id)
        return bool(entry and entry[0].transitions.state == "connected")

    def connected_count(self) -> int:
        return sum(1 for session, _ in self._sessions.values() if session.transitions.state == "connected")

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        await self.internal_message_broadcast(topic, payload, qos)

    # -- replaced internals -------------------------------------------------------------------

    async def _initialize_client_session(self, reader, writer, remote_address, remote_port):  # type: ignore[no-untyped-def,override]
        try:
            handler, client_session = await _read_connect(reader, writer, self.plugins_manager)
        except MQTTError as exc:
            log.warning("invalid CONNECT from %s:%s: %s", remote_address, remote_port, exc)
            await writer.close()
            raise
        except NoDataError as exc:
            raise AMQTTError(exc) from exc
        if client_session.clean_session:
            # Upstream deletes the existing session of this client id here, before the CONNECT is
            # authenticated; _handle_client_session does it once the credentials are good.
            if not client_session.client_id:
                client_session.client_id = gen_client_id()
            client_session.parent = 0
        elif client_session.client_id in self._sessions:
            existing, _ = self._sessions[client_session.client_id]
            existing.will_flag = client_session.will_flag
            existing.will_message = client_session.will_message
            existing.will_topic = client_session.will_topic
            existing.will_qos = client_session.will_qos
            existing.keep_alive = client_session.keep_alive
            existing.username = client_session.username
            existing.password = client_session.password
            existing.ssl_object = client_session.ssl_object
            client_session = existing
            client_session.parent = 1
        else:
            client_session.parent = 0
        # amqtt 0.12.1's broker handler acts on neither timeout its keepalive arms (its
        # handle_read_timeout and handle_write_timeout are no-ops): the keepalive only cost a
        # task and a timer per packet read (asyncio.wait_for) and a timer per packet sent. The
        # client's value stays in the session's attributes.
        client_session.attributes[KEEPALIVE] = client_session.keep_alive
        client_session.keep_alive = 0
        return handler, client_session

    async def _authenticate(self, session: Session, _listener: Any) -> bool:
        # Same verdict as upstream (every plugin that answers must say yes, and one must answer),
        # without a task per plugin per CONNECT.
        answered = False
        for plugin in self.plugins_manager._auth_plugins:
            result = await plugin.authenticate(session=session)
            if result is None:
                continue
            if not result:
                return False
            answered = True
        return answered

    async def _topic_filtering(self, session: Session, topic: str, action: Action) -> bool:
        # Same verdict as upstream (every topic plugin must answer True), called directly.
        if not self._topic_filtering_enabled:
            return True
        for plugin in self.plugins_manager._topic_plugins:
            if not await plugin.topic_filtering(session=session, topic=topic, action=action):
                return False
        return True

    async def _handle_client_session(self, reader, writer, client_session, handler, server, listener_name):  # type: ignore[no-untyped-def,override]
        authenticated = await self._authenticate(client_session, self.listeners_config[listener_name])
        if client_session.client_id is None:
            raise BrokerError("Client ID was not correctly created/set.")
        if not authenticated:
            # Answer the refusal without touching the session table: a live session of the same
            # client id (the real device) stays connected.
            handler.attach(client_session, reader, writer)
            await handler.mqtt_connack_authorize(False)
            with contextlib.suppress(OSError):
                await writer.close()
            return
        existing = self._sessions.get(client_session.client_id)
        if existing is not None and existing[0] is not client_session:
            # An authenticated client takes over its client id [MQTT-3.1.4-2]: the old
            # connection is closed and, for a clean session, its state deleted (upstream does
            # this before authentication, in _initialize_client_session).
            if existing[0].transitions.state == "connected":
                await existing[1].handle_connection_closed()
                await existing[1].stop()
            if client_session.clean_session:
                await self._delete_session(client_session.client_id)
        while True:
            try:
                client_session.transitions.connect()
                break
            except Exception:  # MachineError/ValueError, as upstream
                if client_session.transitions.is_connected():
                    old = self._sessions[client_session.client_id]
                    await old[1].handle_connection_closed()
                    await old[1].stop()
                    break
                await asyncio.sleep(1)

        handler.attach(client_session, reader, writer)
        self._sessions[client_session.client_id] = (client_session, handler)
        await handler.mqtt_connack_authorize(True)
        await self.plugins_manager.fire_event(
            BrokerEvents.CLIENT_CONNECTED, client_id=client_session.client_id, client_session=client_session
        )
        await handler.start()
        await self._publish_session_retained_messages(client_session)
        if self._retained_messages:
            for topic_filter in list(self._client_filters.get(client_session.client_id, ())):
                await self._publish_retained_messages_for_subscription((topic_filter, QOS_0), client_session)
        await self._client_message_loop(client_session, handler)

    async def _client_message_loop(self, client_session: Session, handler: BrokerProtocolHandler) -> None:
        # Upstream's loop, less its `logger.debug(repr(self._subscriptions))` after every SUBSCRIBE.
        disconnect_waiter = asyncio.ensure_future(handler.wait_disconnect())
        subscribe_waiter = asyncio.ensure_future(handler.get_next_pending_subscription())
        unsubscribe_waiter = asyncio.ensure_future(handler.get_next_pending_unsubscription())
        wait_deliver = asyncio.ensure_future(handler.mqtt_deliver_next_message())
        connected = True
        while connected:
            try:
                done, _ = await asyncio.wait(
                    [disconnect_waiter, subscribe_waiter, unsubscribe_waiter, wait_deliver],
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if disconnect_waiter in done:
                    await self._handle_disconnect(client_session, handler, disconnect_waiter)
                    connected = False
                if subscribe_waiter in done:
                    await self._handle_subscription(client_session, handler, subscribe_waiter)
                    subscribe_waiter = asyncio.ensure_future(handler.get_next_pending_subscription())
                if unsubscribe_waiter in done:
                    await self._handle_unsubscription(client_session, handler, unsubscribe_waiter)
                    unsubscribe_waiter = asyncio.ensure_future(handler.get_next_pending_unsubscription())
                if wait_deliver in done:
                    if not await self._handle_message_delivery(client_session, handler, wait_deliver):
                        break
                    wait_deliver = asyncio.ensure_future(handler.mqtt_deliver_next_message())
            except asyncio.CancelledError:
                break
        pending = [disconnect_waiter, subscribe_waiter, unsubscribe_waiter, wait_deliver]
        for waiter in pending:
            waiter.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def is_current(self, session: Session) -> bool:
        """True if `session` is the one the broker holds for its client id (not a replaced one)."""
        entry = self._sessions.get(session.client_id or "")
        return entry is not None and entry[0] is session

    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        result = await super().add_subscription(subscription, session)
        if result != 0x80 and session.client_id:
            topic_filter = subscription[0]
            self._index[_prefix_key(topic_filter)].add(topic_filter)
            self._client_filters[session.client_id].add(topic_filter)
        return result

    def _del_subscription(self, a_filter: str, session: Session) -> int:
        deleted = super()._del_subscription(a_filter, session)
        if deleted and session.client_id:
            self._client_filters[session.client_id].discard(a_filter)
        if not self._subscriptions.get(a_filter):
            self._subscriptions.pop(a_filter, None)
            key = _prefix_key(a_filter)
            bucket = self._index.get(key)
            if bucket is not None:
                bucket.discard(a_filter)
                if not bucket:
                    del self._index[key]
        return deleted

    async def _del_all_subscriptions(self, session: Session) -> None:
        client_id = session.client_id or ""
        for topic_filter in list(self._client_filters.pop(client_id, ())):
            self._del_subscription(topic_filter, session)

    def _candidate_filters(self, topic: str) -> list[str]:
        levels = topic.split("/")
        found: list[str] = list(self._index.get("", ()))
        for depth in range(1, len(levels) + 1):
            bucket = self._index.get("/".join(levels[:depth]))
            if bucket:
                found.extend(bucket)
        return found

    async def _run_broadcast(self, running_tasks) -> None:  # type: ignore[no-untyped-def]
        await self._deliver(await self._broadcast_queue.get(), running_tasks)

    async def _deliver(self, broadcast: dict[str, Any], running_tasks: Any) -> None:
        topic = broadcast["topic"]
        for k_filter in self._candidate_filters(topic):
            subscriptions = self._subscriptions.get(k_filter)
            if not subscriptions or not self._matches(topic, k_filter):
                continue
            for target_session, sub_qos in list(subscriptions):
                qos = min(broadcast.get("qos", sub_qos), sub_qos)
                if not await self._topic_filtering(target_session, topic=topic, action=Action.RECEIVE):
                    continue
                if target_session.transitions.state != "connected":
                    if not target_session.clean_session and qos > QOS_0 and not target_session.is_anonymous:
                        await self._retain_broadcast_message(broadcast, qos, target_session)
                    continue
                handler = self._get_handler(target_session)
                if handler:
                    running_tasks.append(
                        asyncio.ensure_future(handler.mqtt_publish(topic, broadcast["data"], qos, retain=False))
                    )

    async def _broadcast_loop(self) -> None:
        # Upstream starts a task and an asyncio.wait (against the shutdown signal) per message;
        # this loop delivers what is queued directly and only waits that way when idle.
        running_tasks = self._tasks_queue
        shutdown = self._broadcast_shutdown_waiter
        queue = self._broadcast_queue
        try:
            while not shutdown.done():
                while running_tasks and running_tasks[0].done():
                    task = running_tasks.popleft()
                    if not task.cancelled() and task.exception() is not None:
                        log.warning("a message delivery failed: %r", task.exception())
                if queue.empty():
                    getter = asyncio.ensure_future(queue.get())
                    await asyncio.wait([getter, shutdown], return_when=asyncio.FIRST_COMPLETED)
                    if not getter.done():
                        getter.cancel()
                        break
                    broadcast = getter.result()
                else:
                    broadcast = queue.get_nowait()
                await self._deliver(broadcast, running_tasks)
        finally:
            pending = [task for task in running_tasks if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)

    def _direct_plugin_events(self) -> None:
        """Plugin events call the plugins' handlers in line instead of in a task each.

        The only plugin here with event handlers is PlatformHookPlugin, whose handlers only put
        the event on the gateway's queue; a task per connect, disconnect and message (and
        amqtt's bookkeeping of each in a list) cost more than the handlers.
        """
        callbacks = self.plugins_manager._event_plugin_callbacks

        async def fire_event(event_name: Any, *, wait: bool = False, **kwargs: Any) -> None:
            for method in callbacks.get(event_name, ()):
                try:
                    await method(**kwargs)
                except Exception:
                    log.exception("plugin event %s failed", event_name)

        self.plugins_manager.fire_event = fire_event  # type: ignore[method-assign]


def broker_config(
    *,
    identities: Identities,
    hooks: BrokerHooks,
    host: str,
    mqtts_port: int,
    certfile: Path,
    keyfile: Path,
    cafile: Path,
    mqtt_port: int | None = None,
) -> dict[str, Any]:
    """amqtt configuration: a TLS listener, and a plain one on loopback only when asked for."""
    listeners: dict[str, Any] = {
        "default": {
            "type": "tcp",
            "bind": f"{host}:{mqtts_port}",
            "ssl": True,
            "certfile": str(certfile),
            "keyfile": str(keyfile),
            "cafile": str(cafile),
            "max_connections": 0,
        }
    }
    if mqtt_port is not None:
        # Every field set explicitly: amqtt copies unset fields from "default", TLS included.
        listeners["plain"] = {
            "type": "tcp", "bind": f"127.0.0.1:{mqtt_port}", "ssl": False,
            "certfile": None, "keyfile": None, "cafile": None, "max_connections": 0,
        }
    return {
        "listeners": listeners,
        "timeout_disconnect_delay": 2,
        "plugins": {
            "harness.broker.plugins.RegistryAuthPlugin": {"identities": identities},
            "harness.broker.plugins.DeviceTopicPlugin": {},
            "harness.broker.plugins.PlatformHookPlugin": {"hooks": hooks},
        },
    }
