"""The broker's plugins: authentication and topic ACL backed by the registry, and the hooks
through which the platform hears the broker, in process.

They are amqtt plugins (amqtt.plugins.base), loaded by dotted path from the broker's
configuration (harness.broker.broker_config).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from amqtt.broker import BrokerContext
from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BasePlugin, BaseTopicPlugin
from amqtt.session import Session

from agent import wire
from harness.platform.identities import Identities, digest
from harness.platform.pki import fingerprint_der

if TYPE_CHECKING:
    from harness.broker.server import FleetBroker

log = logging.getLogger("fleetrig.broker")

ROLE = "fleetrig.role"
SERIAL = "fleetrig.serial"
INIT_KEY_HASH = "fleetrig.init_key_hash"


class RegistryAuthPlugin(BaseAuthPlugin):
    """Authenticates a CONNECT against the registry's live credentials.

    username and client id are the device serial; the password says which credential is used:
    `init:<key>` (one-time, registration only), `token:<token>`, or none with a client
    certificate presented in the TLS handshake. Anonymous and unknown clients are refused, and
    so is a certificate whose fingerprint is not the device's current one (revoked, or the
    device disposed). amqtt.contrib.cert checks only that a CA-signed SAN matches; the
    registry check adds revocation.
    """

    @dataclass
    class Config:
        identities: Any = None

    @property
    def identities(self) -> Identities:
        return self.config.identities

    async def authenticate(self, *, session: Session) -> bool | None:
        serial = session.username or ""
        if not serial or session.client_id != serial:
            log.info("refused connect: client id %r and username %r differ", session.client_id, serial)
            return False
        password = session.password or ""
        if isinstance(password, bytes | bytearray):
            password = password.decode("utf-8", "replace")
        if password.startswith(wire.INIT_PASSWORD_PREFIX):
            key = password[len(wire.INIT_PASSWORD_PREFIX):]
            if not self.identities.init_key_ok(serial, key):
                log.info("refused connect of %s: init key unknown, used or revoked", serial)
                return False
            session.attributes[ROLE] = wire.ROLE_REGISTRATION
            session.attributes[INIT_KEY_HASH] = digest(key)
        elif password.startswith(wire.TOKEN_PASSWORD_PREFIX):
            if not self.identities.token_ok(serial, password[len(wire.TOKEN_PASSWORD_PREFIX):]):
                log.info("refused connect of %s: token unknown or revoked", serial)
                return False
            session.attributes[ROLE] = wire.ROLE_DEVICE
        elif not password:
            der = session.ssl_object.getpeercert(binary_form=True) if session.ssl_object else None
            if not der:
                log.info("refused connect of %s: no password and no client certificate", serial)
                return False
            # The TLS layer parsed and verified the chain; the registry names certificates by the
            # SHA-256 of their DER, which is what the handshake carried.
            if not self.identities.certificate_ok(serial, fingerprint_der(der)):
                log.info("refused connect of %s: certificate is not the device's current one", serial)
                return False
            session.attributes[ROLE] = wire.ROLE_DEVICE
        else:
            log.info("refused connect of %s: password of unknown kind", serial)
            return False
        session.attributes[SERIAL] = serial
        return True


class DeviceTopicPlugin(BaseTopicPlugin):
    """The topic ACL: a device publishes, subscribes and receives only its own topics."""

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None
    ) -> bool | None:
        if session is None or topic is None:
            return False
        role = session.attributes.get(ROLE)
        serial = session.attributes.get(SERIAL)
        if not role or not serial:
            return False
        if action == Action.PUBLISH:
            return wire.may_publish(role, serial, topic)
        if action == Action.SUBSCRIBE:
            return wire.may_subscribe(role, serial, topic)
        return wire.may_receive(role, serial, topic)


MessageHandler = Callable[[Session, str, bytes], Awaitable[None]]
SessionHandler = Callable[[Session, bool], Awaitable[None]]


@dataclass
class BrokerHooks:
    """How the platform hears the broker: messages that passed the ACL, and session changes."""

    on_message: MessageHandler | None = None
    on_session: SessionHandler | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class PlatformHookPlugin(BasePlugin[BrokerContext]):
    """Tells the platform, in process, of session changes and of each message that passed the ACL."""

    @dataclass
    class Config:
        hooks: Any = None

    @property
    def hooks(self) -> BrokerHooks:
        return self.config.hooks

    async def on_broker_client_connected(self, *, client_id: str, client_session: Session) -> None:
        if self.hooks.on_session:
            await self.hooks.on_session(client_session, True)

    async def on_broker_client_disconnected(self, *, client_id: str, client_session: Session) -> None:
        broker: FleetBroker | None = self.hooks.extra.get("broker")
        if broker is not None and client_id in broker._sessions and not broker.is_current(client_session):
            return  # a replaced connection: the client id is connected again through a new one
        if self.hooks.on_session:
            await self.hooks.on_session(client_session, False)

    async def on_broker_message_broadcast(self, *, client_id: str, message: Any) -> None:
        broker: FleetBroker | None = self.hooks.extra.get("broker")
        if self.hooks.on_message is None or broker is None:
            return
        entry = broker._sessions.get(client_id)
        if entry is not None:
            await self.hooks.on_message(entry[0], message.topic, bytes(message.data or b""))
