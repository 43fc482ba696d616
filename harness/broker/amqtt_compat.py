"""Every override of amqtt's internals, in one module, for amqtt 0.12.1 only.

`CompatBroker` is amqtt 0.12.1's Broker with these internals replaced (pyproject pins the
release exactly, and this module refuses to load with any other installed):

Security, against hostile devices:

* nothing of a CONNECT touches an existing session until the CONNECT is authenticated and
  authorised (`authorise_connect`): upstream copies the will, credentials and TLS object of any
  CONNECT with clean_session=0 into the live session of that client id before authentication,
  and for a clean session deletes the live one's subscriptions; a refused client's will then
  fired from the real device's session;
* a client's PUBLISH and its last will take one path (`client_publish`: the publish ACL, the
  platform's hook, the retained rules); upstream publishes a will with no ACL check at all;
* a packet whose remaining length exceeds the limit closes the connection before its body is
  read, the CONNECT included; a packet that does not decode closes it too (upstream logs
  "message discarded" and parses the rest of the stream as new packets);
* a connection has `connect_timeout` from accept to CONNECT, the TLS handshake included
  (upstream waits for ever after the handshake, and asyncio 60 s for the handshake);
* keepalive is enforced by one periodic sweep over per-connection last-packet stamps
  (`connections`, `FleetProtocolHandler.last_packet_at`), not by amqtt's timers: amqtt 0.12.1's
  broker handler arms a task and timer per packet read (asyncio.wait_for) and a timer per packet
  sent, and its timeout handlers do nothing;
* a connection holds at most `max_inflight_qos2` QoS 2 messages waiting for their PUBREL.

Cost, each measured on a fleet of thousands of sessions:

* a session's new/connected/disconnected states are a small object, not a
  `transitions.Machine` built per CONNECT (a third of the broker's connect cost);
* no per-subscribe debug log of every subscription in the broker (upstream formats it
  whatever the log level: O(all sessions) per SUBSCRIBE);
* authentication and topic checks call the plugins directly instead of through one task per
  plugin per check;
* plugin events call the handlers in line, and queued messages are delivered without a task
  and an asyncio.wait each;
* a published message is matched only against the subscriptions that can match it (an
  index by literal topic prefix) instead of every subscription of every client;
* a client's subscriptions are tracked per client, so connect and disconnect cost O(its own
  subscriptions), not O(all subscriptions);
* retained messages are offered to a resumed session for its own subscriptions only.

Everything else (the codec, QoS flows, session queues) is amqtt's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import ssl
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from functools import partial
from typing import Any

from harness.broker.limits import BrokerLimits, BrokerStats

#: The one amqtt release this module was written for.
AMQTT_VERSION = "0.12.1"

_installed = importlib.metadata.version("amqtt")
if _installed != AMQTT_VERSION:
    raise ImportError(
        f"harness/broker/amqtt_compat.py overrides internals of amqtt {AMQTT_VERSION} only, and amqtt "
        f"{_installed} is installed: pip install 'amqtt=={AMQTT_VERSION}'"
    )

from amqtt.adapters import WriterAdapter  # noqa: E402
from amqtt.broker import Broker, RetainedApplicationMessage  # noqa: E402
from amqtt.contexts import Action, ListenerType  # noqa: E402
from amqtt.errors import AMQTTError, BrokerError, CodecError, MQTTError, NoDataError  # noqa: E402
from amqtt.events import BrokerEvents, MQTTEvents  # noqa: E402
from amqtt.mqtt import packet_class  # noqa: E402
from amqtt.mqtt.connack import (  # noqa: E402
    BAD_USERNAME_PASSWORD,
    IDENTIFIER_REJECTED,
    UNACCEPTABLE_PROTOCOL_VERSION,
    ConnackPacket,
)
from amqtt.mqtt.connect import ConnectPacket  # noqa: E402
from amqtt.mqtt.constants import QOS_0, QOS_2  # noqa: E402
from amqtt.mqtt.disconnect import DisconnectPacket  # noqa: E402
from amqtt.mqtt.packet import (  # noqa: E402
    CONNACK,
    CONNECT,
    DISCONNECT,
    PINGREQ,
    PINGRESP,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBACK,
    SUBSCRIBE,
    UNSUBACK,
    UNSUBSCRIBE,
    MQTTFixedHeader,
)
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler  # noqa: E402
from amqtt.session import ApplicationMessage, Session  # noqa: E402
from amqtt.utils import gen_client_id  # noqa: E402
from transitions import MachineError  # noqa: E402

log = logging.getLogger("fleetrig.broker")

#: What a packet type is handled by, in a task of its own (as upstream); CONNECT is in line.
_HANDLERS = {
    CONNACK: "handle_connack", SUBSCRIBE: "handle_subscribe", UNSUBSCRIBE: "handle_unsubscribe",
    SUBACK: "handle_suback", UNSUBACK: "handle_unsuback", PUBACK: "handle_puback", PUBREC: "handle_pubrec",
    PUBREL: "handle_pubrel", PUBCOMP: "handle_pubcomp", PINGREQ: "handle_pingreq", PINGRESP: "handle_pingresp",
    PUBLISH: "handle_publish", DISCONNECT: "handle_disconnect",
}

#: What an authorised CONNECT that resumes a stored session (clean_session=0) brings to it.
_RESUMED_FIELDS = ("will_flag", "will_retain", "will_qos", "will_topic", "will_message", "keep_alive",
                   "username", "password", "remote_address", "remote_port", "ssl_object", "attributes")


def abort_stream(writer: WriterAdapter | None) -> None:
    """Close a connection at once: no flush, no TLS close_notify (a frozen peer reads neither)."""
    transport = getattr(getattr(writer, "_writer", None), "transport", None)
    if transport is not None:
        transport.abort()


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


class FleetProtocolHandler(BrokerProtocolHandler):
    """amqtt's broker handler with a bounded reader loop and a last-packet stamp for the sweep."""

    def __init__(self, plugins_manager: Any, limits: BrokerLimits, stats: BrokerStats) -> None:
        super().__init__(plugins_manager)
        self.limits = limits
        self.stats = stats
        #: time.monotonic() of the last packet header read from the client.
        self.last_packet_at = time.monotonic()
        #: Set when the connection's session handling has ended (its disconnect is complete).
        self.finished = asyncio.Event()

    def _init_session(self, session: Session) -> None:
        super()._init_session(session)
        # Keepalive is the broker's sweep; no timer per packet sent (see the module docstring).
        self.keepalive_timeout = None

    def abort(self) -> None:
        abort_stream(self.writer)

    def _refuse(self, what: str, detail: str) -> None:
        client_id = self.session.client_id if self.session else None
        log.warning("%s: %s: closing the connection", client_id, detail)
        if what == "oversized":
            self.stats.oversized_packets += 1
        else:
            self.stats.malformed_packets += 1
        self.abort()

    async def _reader_loop(self) -> None:
        # amqtt 0.12.1's ProtocolHandler._reader_loop, with: no asyncio.wait_for per packet, the
        # remaining length checked before the body is read, a stamp per packet, and a close (not
        # "message discarded") on a packet that does not decode.
        if self.session is None or self._reader_ready is None or self.reader is None:
            raise AMQTTError("the handler is not attached to a session and a stream")
        session = self.session
        reader = self.reader
        running: deque[asyncio.Task[None]] = deque()
        # QoS 2 PUBLISH flows not finished: each waits for its PUBREL, holding its message.
        unreleased: set[asyncio.Task[None]] = set()
        self._reader_ready.set()
        while True:
            try:
                while running and running[0].done():
                    running.popleft()
                header = await MQTTFixedHeader.from_stream(reader)
                if header is None:
                    break  # end of stream
                self.last_packet_at = time.monotonic()
                if header.remaining_length > self.limits.max_packet_bytes:
                    self._refuse("oversized", f"packet type {header.packet_type} of {header.remaining_length} "
                                              f"bytes exceeds the limit of {self.limits.max_packet_bytes}")
                    break
                if header.packet_type == CONNECT:
                    self._refuse("malformed", "[MQTT-3.1.0-2] a second CONNECT")
                    break
                name = _HANDLERS.get(header.packet_type)
                if name is None:
                    self._refuse("malformed", f"packet type {header.packet_type} is reserved or not a client's")
                    break
                packet = await packet_class(header).from_stream(reader, fixed_header=header)
                qos2 = header.packet_type == PUBLISH and packet.qos == QOS_2
                if qos2 and len(unreleased) >= self.limits.max_inflight_qos2:
                    self._refuse("malformed", f"more than {self.limits.max_inflight_qos2} QoS 2 messages "
                                              "waiting for their PUBREL")
                    break
                await self.plugins_manager.fire_event(MQTTEvents.PACKET_RECEIVED, packet=packet, session=session)
                task = asyncio.create_task(getattr(self, name)(packet))
                running.append(task)
                if qos2:
                    unreleased.add(task)
                    task.add_done_callback(unreleased.discard)
            except (MQTTError, AMQTTError, CodecError, ValueError, UnicodeDecodeError) as exc:
                self._refuse("malformed", f"undecodable packet ({str(exc)[:120]})")
                break
            except NoDataError:
                break  # the stream ended inside a packet
            except asyncio.CancelledError:
                break
            except Exception as exc:
                log.warning("%s: reader stopped by %r", session.client_id, exc)
                break
        while running:
            running.popleft().cancel()
        await self.handle_connection_closed()
        self._reader_stopped.set()
        await self.stop()


async def read_connect(
    reader: Any, writer: Any, plugins_manager: Any, limits: BrokerLimits, stats: BrokerStats
) -> tuple[FleetProtocolHandler, FleetSession]:
    """amqtt 0.12.1's BrokerProtocolHandler.init_from_connect, bounded, making a FleetSession."""
    header = await MQTTFixedHeader.from_stream(reader)
    if header is None:
        raise NoDataError("the connection closed before a CONNECT")
    if header.packet_type != CONNECT:
        stats.malformed_packets += 1
        raise MQTTError(f"[MQTT-3.1.0-1] the first packet is of type {header.packet_type}, not CONNECT")
    if header.remaining_length > limits.max_packet_bytes:
        stats.oversized_packets += 1
        raise MQTTError(f"CONNECT of {header.remaining_length} bytes exceeds the limit of {limits.max_packet_bytes}")
    try:
        connect = await ConnectPacket.from_stream(reader, fixed_header=header)
    except (AMQTTError, CodecError, ValueError, UnicodeDecodeError) as exc:
        stats.malformed_packets += 1
        raise MQTTError(f"undecodable CONNECT ({str(exc)[:120]})") from None
    await plugins_manager.fire_event(MQTTEvents.PACKET_RECEIVED, packet=connect)
    if connect.variable_header is None or connect.payload is None:
        raise MQTTError("CONNECT packet: variable header or payload missing")
    payload = connect.payload
    if payload.client_id is None:
        raise MQTTError("[[MQTT-3.1.3-3]] : Client identifier must be present")
    if connect.variable_header.will_flag and (payload.will_topic is None or payload.will_message is None):
        raise MQTTError("Will flag set, but will topic/message not present in payload")
    if connect.variable_header.reserved_flag:
        raise MQTTError("[MQTT-3.1.2-3] CONNECT reserved flag must be set to 0")
    if connect.proto_name != "MQTT":
        raise MQTTError(f'[MQTT-3.1.2-1] Incorrect protocol name: "{connect.proto_name[:32]}"')
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
    return FleetProtocolHandler(plugins_manager, limits, stats), session


def _prefix_key(topic_filter: str) -> str:
    """The literal levels of a filter before its first wildcard: its key in the index."""
    levels = []
    for level in topic_filter.split("/"):
        if level in ("+", "#"):
            break
        levels.append(level)
    return "/".join(levels)


class CompatBroker(Broker):
    """amqtt's Broker with the internals above replaced; FleetBroker adds the policy hooks."""

    def __init__(self, config: dict[str, Any], limits: BrokerLimits) -> None:
        super().__init__(config)
        self.limits = limits
        self.stats = BrokerStats()
        self._index: dict[str, set[str]] = defaultdict(set)
        self._client_filters: dict[str, set[str]] = defaultdict(set)
        #: Connections that have not sent their CONNECT yet: id(writer) -> (accepted at, writer).
        self._awaiting_connect: dict[int, tuple[float, WriterAdapter]] = {}
        self._topic_filtering_enabled = self.plugins_manager.is_topic_filtering_enabled()
        self._direct_plugin_events()

    # -- hooks for FleetBroker ------------------------------------------------------------------

    async def authorise_connect(self, session: Session) -> bool:
        """May this CONNECT open a session? It has touched no stored session yet."""
        return await self._authenticate(session, None)

    async def client_publish(self, session: Session, message: ApplicationMessage, *, will: bool) -> None:
        """A message from a client (a PUBLISH, or its last will): upstream's path, unchecked."""
        await self._broadcast_message(session, message.topic, message.data, message.qos if will else None)

    # -- what FleetBroker reads -----------------------------------------------------------------

    def connections(self) -> Iterator[tuple[Session, FleetProtocolHandler]]:
        """Every connected session with its handler."""
        for session, handler in self._sessions.values():
            if session.transitions.state == "connected":
                yield session, handler  # type: ignore[misc]

    def silent_connections(self, now: float, grace: float) -> list[tuple[Session, FleetProtocolHandler]]:
        """Connected sessions with a keepalive that sent nothing for over `grace` x keepalive.

        The sweep's inner loop, kept to plain attribute reads: ~0.3 us a session.
        """
        found = []
        for session, handler in self._sessions.values():
            keepalive = session.keep_alive
            silent = now - handler.last_packet_at  # type: ignore[attr-defined]
            if keepalive and silent > grace * keepalive and session.transitions.state == "connected":
                found.append((session, handler))
        return found  # type: ignore[return-value]

    def awaiting_connect(self) -> Iterator[tuple[float, WriterAdapter]]:
        """(accepted at, writer) of every connection that has not sent its CONNECT yet."""
        return iter(list(self._awaiting_connect.values()))

    def session(self, client_id: str) -> Session | None:
        """The session the broker holds for a client id, connected or not."""
        entry = self._sessions.get(client_id)
        return entry[0] if entry is not None else None

    def handler(self, client_id: str) -> FleetProtocolHandler | None:
        entry = self._sessions.get(client_id)
        return entry[1] if entry is not None else None  # type: ignore[return-value]

    def retained_topics(self) -> dict[str, bytes]:
        return {topic: bytes(message.data or b"") for topic, message in self._retained_messages.items()}

    def store_retained(self, session: Session | None, topic: str, data: bytes | bytearray, qos: int | None) -> None:
        self._retained_messages[topic] = RetainedApplicationMessage(session, topic, data, qos)

    def clear_retained(self, topic: str) -> None:
        self._retained_messages.pop(topic, None)

    # -- TLS and listeners ----------------------------------------------------------------------

    @staticmethod
    def _create_ssl_context(listener: Any) -> ssl.SSLContext:  # type: ignore[override]
        ctx = Broker._create_ssl_context(listener)
        # No TLS 1.3 session tickets: devices do not resume sessions (a device's second
        # connection must show its certificate), and each ticket costs the broker an encryption
        # and a record per connect, and the client a session object it keeps.
        ctx.num_tickets = 0
        return ctx

    async def _create_server_instance(self, listener_name, listener_type, address, port, ssl_context):  # type: ignore[no-untyped-def,override]
        if listener_type != ListenerType.TCP:
            return await super()._create_server_instance(listener_name, listener_type, address, port, ssl_context)
        # Upstream's TCP server, with the TLS handshake bounded by the connect deadline
        # (asyncio's default is 60 s).
        return await asyncio.start_server(
            partial(self.stream_connected, listener_name=listener_name), address, port, reuse_address=True,
            ssl=ssl_context, ssl_handshake_timeout=self.limits.connect_timeout if ssl_context else None,
        )

    def bound_port(self, listener: str) -> int:
        server = self._servers[listener].instance
        return int(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    # -- connect --------------------------------------------------------------------------------

    async def _initialize_client_session(self, reader, writer, remote_address, remote_port):  # type: ignore[no-untyped-def,override]
        key = id(writer)
        self._awaiting_connect[key] = (time.monotonic(), writer)
        try:
            handler, session = await read_connect(reader, writer, self.plugins_manager, self.limits, self.stats)
        except MQTTError as exc:
            log.warning("invalid CONNECT from %s:%s: %s", remote_address, remote_port, exc)
            with contextlib.suppress(Exception):
                await writer.close()
            raise
        except NoDataError as exc:
            raise AMQTTError(exc) from exc
        except (OSError, ssl.SSLError) as exc:
            raise AMQTTError(f"connection from {remote_address}:{remote_port} lost before CONNECT: {exc}") from exc
        finally:
            self._awaiting_connect.pop(key, None)
        if session.clean_session and not session.client_id:
            session.client_id = gen_client_id()
        # The stored session of this client id, if any, is left alone until the CONNECT is
        # authorised (_take_over).
        session.parent = 0
        return handler, session

    async def _take_over(self, candidate: Session) -> Session:
        """The session an authorised CONNECT runs in; closes the client id's live connection first."""
        client_id = candidate.client_id or ""
        entry = self._sessions.get(client_id)
        if entry is None:
            return candidate
        stored, old_handler = entry
        if stored.transitions.state == "connected":
            # [MQTT-3.1.4-2]: the old connection is closed, and its disconnect completes (will,
            # CLIENT_DISCONNECTED) before the new one starts, so the platform hears them in order.
            old_handler.abort()  # type: ignore[attr-defined]
            finished = getattr(old_handler, "finished", None)
            if finished is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(finished.wait(), timeout=10)
        if candidate.clean_session or stored.clean_session:
            # A clean session's state ends with its connection [MQTT-3.1.2-6]: nothing to resume.
            await self._delete_session(client_id)
            return candidate
        for name in _RESUMED_FIELDS:
            setattr(stored, name, getattr(candidate, name))
        stored.parent = 1
        return stored

    async def _handle_client_session(self, reader, writer, client_session, handler, server, listener_name):  # type: ignore[no-untyped-def,override]
        try:
            if client_session.client_id is None:
                raise BrokerError("Client ID was not correctly created/set.")
            if not await self.authorise_connect(client_session):
                # Answered without touching the session table: a live session of the same
                # client id (the real device) stays connected and unchanged.
                handler.attach(client_session, reader, writer)
                await handler.mqtt_connack_authorize(False)
                with contextlib.suppress(OSError):
                    await writer.close()
                return
            client_session = await self._take_over(client_session)
            try:
                client_session.transitions.connect()
            except MachineError:
                log.warning("%s: the previous connection did not close; refusing the new one",
                            client_session.client_id)
                abort_stream(writer)
                return
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
        finally:
            handler.finished.set()

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

    # -- a connection's messages ----------------------------------------------------------------

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
                    await self._handle_message_delivery(client_session, handler, wait_deliver)
                    wait_deliver = asyncio.ensure_future(handler.mqtt_deliver_next_message())
            except asyncio.CancelledError:
                break
        pending = [disconnect_waiter, subscribe_waiter, unsubscribe_waiter, wait_deliver]
        for waiter in pending:
            waiter.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _handle_message_delivery(self, client_session, handler, wait_deliver) -> bool:  # type: ignore[no-untyped-def,override]
        # Upstream's topic checks (which end the message loop and leave the session "connected"
        # with its reader running), as a close of the connection; then the one client path.
        message = wait_deliver.result()
        if message is None:
            return True
        topic = message.topic or ""
        if not topic or "#" in topic or "+" in topic or topic.startswith("$"):
            log.warning("%s: PUBLISH on invalid topic %r: closing the connection", client_session.client_id,
                        topic[:120])
            self.stats.malformed_packets += 1
            handler.abort()
            return True
        await self.client_publish(client_session, message, will=False)
        return True

    async def _handle_disconnect(self, client_session, handler, disconnect_waiter) -> None:  # type: ignore[no-untyped-def,override]
        # Upstream's, with the will published through client_publish (ACL, hook, retained rules).
        result = disconnect_waiter.result()
        if not isinstance(result, DisconnectPacket) and client_session.will_flag and client_session.will_topic:
            will = ApplicationMessage(None, client_session.will_topic, client_session.will_qos,
                                      bytes(client_session.will_message or b""), bool(client_session.will_retain))
            await self.client_publish(client_session, will, will=True)
        await self._stop_handler(handler)
        client_session.transitions.disconnect()
        await self.plugins_manager.fire_event(
            BrokerEvents.CLIENT_DISCONNECTED, client_id=client_session.client_id, client_session=client_session
        )

    # -- subscriptions --------------------------------------------------------------------------

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

    # -- delivery -------------------------------------------------------------------------------

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
