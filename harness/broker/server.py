"""The built-in MQTT broker: amqtt, with the registry's authentication, the topic ACL, and
the bounds that keep one hostile device from hurting the others.

`FleetBroker` is the policy; harness.broker.amqtt_compat holds every override of amqtt's
internals it needs (and why each). What FleetBroker decides:

* a CONNECT is authorised only if its credentials are good (RegistryAuthPlugin) and its last
  will is one the device could publish itself: the same publish ACL as a PUBLISH, and, for a
  retained will, the retained rules. A CONNECT that fails either is refused (CONNACK "not
  authorised") and logged; nothing of it reaches a stored session;
* every message from a client, a PUBLISH or a will when it fires, takes one path
  (`client_publish`): the publish ACL, then the platform's hook, then delivery, then the
  retained rules of harness.broker.retained;
* one sweep a second (`sweep`) closes sessions silent for 1.5 x their keepalive (the will fires,
  the platform marks the device offline) and connections with no CONNECT after
  `connect_timeout`. Measured on this project's 2-core VM: one sweep over 10,000 sessions'
  stamps takes 1.3-5 ms, depending on what else the machine runs (at most 0.5 % of a core at
  one a second; bench/abuse_load.py prints it as sweep_ms_per_10k_sessions), while amqtt's
  keepalive, an asyncio.wait_for around every packet read, costs 10-20 us more per packet than
  a plain read: 10-20 ms a second for 10,000 devices sending one packet every 10 s, and a
  timer per packet sent on top.

Process-wide tuning (GC, TLS buffers) is not done here: see harness.broker.tuning, which entry
points call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from amqtt.contexts import Action
from amqtt.events import BrokerEvents
from amqtt.session import ApplicationMessage, Session

from harness.broker.amqtt_compat import CompatBroker, abort_stream
from harness.broker.authenticator import Authenticator
from harness.broker.limits import BrokerLimits
from harness.broker.plugins import ROLE, BrokerHooks
from harness.broker.retained import RetainedLedger

__all__ = ["BrokerHooks", "BrokerLimits", "FleetBroker", "broker_config"]

log = logging.getLogger("fleetrig.broker")


class FleetBroker(CompatBroker):
    """amqtt's Broker, scaled for fleets, bounded against hostile devices, wired to the platform."""

    def __init__(self, config: dict[str, Any], hooks: BrokerHooks, limits: BrokerLimits | None = None) -> None:
        super().__init__(config, limits or BrokerLimits())
        self.hooks = hooks
        self.retained = RetainedLedger(self.limits.retained_per_device, self.limits.retained_bytes_per_device)
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await super().start()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="fleetrig-broker-sweep")

    async def shutdown(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        await super().shutdown()

    # -- session control used by the platform -------------------------------------------------

    async def drop(self, client_id: str, *, role: str | None = None) -> bool:
        """Close a client's live connection (disposal, reissue), only if its session has `role`
        when one is given; True if one was closed."""
        session, handler = self.session(client_id), self.handler(client_id)
        if session is None or handler is None or session.transitions.state != "connected":
            return False
        if role is not None and session.attributes.get(ROLE) != role:
            return False
        await handler.handle_connection_closed()
        return True

    def is_connected(self, client_id: str) -> bool:
        session = self.session(client_id)
        return bool(session and session.transitions.state == "connected")

    def connected_count(self) -> int:
        return sum(1 for _ in self.connections())

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        await self.internal_message_broadcast(topic, payload, qos)

    # -- the policy -------------------------------------------------------------------------------

    def _publish_refusal(self, topic: str, retain: bool, allowed: bool) -> str | None:
        if not allowed:
            return f"on {topic[:160]!r} is outside the device's publish ACL"
        if retain:
            reason = self.retained.topic_refusal(topic)
            if reason is not None:
                return f"is retained on {topic[:160]!r}, but {reason}"
        return None

    async def authorise_connect(self, session: Session) -> bool:
        if not await self._authenticate(session, None):
            return False
        if session.will_flag:
            topic = session.will_topic or ""
            allowed = await self._topic_filtering(session, topic, Action.PUBLISH)
            reason = self._publish_refusal(topic, bool(session.will_retain), allowed)
            if reason is not None:
                self.stats.wills_refused += 1
                log.warning("refused connect of %s: its last will %s", session.client_id, reason)
                return False
        return True

    async def client_publish(self, session: Session, message: ApplicationMessage, *, will: bool) -> None:
        what = "last will" if will else "PUBLISH"
        topic = message.topic
        if not await self._topic_filtering(session, topic, Action.PUBLISH):
            self.stats.publishes_refused += 1
            log.info("%s: %s on %r refused by the topic ACL", session.client_id, what, topic[:160])
            return
        data = message.data or b""
        if will:
            self.stats.wills_published += 1
        await self.plugins_manager.fire_event(
            BrokerEvents.MESSAGE_BROADCAST, client_id=session.client_id, message=message, client_session=session
        )
        await self._broadcast_message(session, topic, data, message.qos if will else None)
        if message.retain:
            self._retain(session, topic, data, message.qos, what)

    def _retain(self, session: Session, topic: str, data: bytes | bytearray, qos: int | None, what: str) -> None:
        if not data:  # [MQTT-3.3.1-10]: an empty retained message clears the topic's
            self.clear_retained(topic)
            self.retained.cleared(topic)
            return
        reason = self.retained.refusal(topic, len(data))
        if reason is not None:
            self.stats.retained_refused += 1
            log.info("%s: retained %s on %r not kept: %s", session.client_id, what, topic[:160], reason)
            return
        self.store_retained(session, topic, data, qos)
        self.retained.stored(topic, len(data))

    # -- keepalive and connect deadlines ----------------------------------------------------------

    def sweep(self, now: float | None = None) -> int:
        """Close idle sessions and connections without a CONNECT; return how many were closed.

        One pass over the stamps every `limits.sweep_interval` (see the module docstring for its
        cost). A closed session goes through the broker's ordinary abnormal-disconnect path:
        its will fires and the platform marks it offline.
        """
        now = time.monotonic() if now is None else now
        closed = 0
        grace = self.limits.keepalive_grace
        for session, handler in self.silent_connections(now, grace):
            log.info("%s: silent for %.1f s, over %.1f x its keepalive of %d s: closing",
                     session.client_id, now - handler.last_packet_at, grace, session.keep_alive)
            self.stats.keepalive_expired += 1
            handler.abort()
            closed += 1
        deadline = self.limits.connect_timeout
        for accepted_at, writer in self.awaiting_connect():
            if now - accepted_at > deadline:
                peer = writer.get_peer_info()
                log.info("%s: no CONNECT within %.1f s: closing", peer, deadline)
                self.stats.connect_timeouts += 1
                abort_stream(writer)
                closed += 1
        return closed

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.limits.sweep_interval)
            try:
                self.sweep()
            except Exception:
                log.exception("broker sweep failed")


def broker_config(
    *,
    authenticator: Authenticator,
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
            "harness.broker.plugins.RegistryAuthPlugin": {"authenticator": authenticator},
            "harness.broker.plugins.DeviceTopicPlugin": {},
            "harness.broker.plugins.PlatformHookPlugin": {"hooks": hooks},
        },
    }
