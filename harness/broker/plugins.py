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
from harness.broker.authenticator import Authenticator

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
    registry check adds revocation. A device logs in only with the kind of credential it was
    provisioned for: a certificate device's token (issued alongside its certificate) is refused.
    """

    @dataclass
    class Config:
        authenticator: Any = None

    @property
    def authenticator(self) -> Authenticator:
        return self.config.authenticator

    def _kind_refusal(self, serial: str, used: str) -> str:
        mode = self.authenticator.auth_mode(serial)
        if mode is not None and mode != used:
            return f"the device is provisioned for {mode} credentials, not {used}"
        return f"{used} credential unknown or revoked"

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
            key_hash = self.authenticator.init_key_hash(serial, key)
            if key_hash is None:
                log.info("refused connect of %s: init key unknown, used or revoked", serial)
                return False
            session.attributes[ROLE] = wire.ROLE_REGISTRATION
            session.attributes[INIT_KEY_HASH] = key_hash
        elif password.startswith(wire.TOKEN_PASSWORD_PREFIX):
            if not self.authenticator.token_ok(serial, password[len(wire.TOKEN_PASSWORD_PREFIX):]):
                log.info("refused connect of %s: %s", serial, self._kind_refusal(serial, wire.AUTH_TOKEN))
                return False
            session.attributes[ROLE] = wire.ROLE_DEVICE
        elif not password:
            der = session.ssl_object.getpeercert(binary_form=True) if session.ssl_object else None
            if not der:
                log.info("refused connect of %s: no password and no client certificate", serial)
                return False
            # The TLS layer parsed and verified the chain; the registry checks it is the device's
            # current certificate (not revoked, not another device's).
            if not self.authenticator.certificate_ok(serial, der):
                log.info("refused connect of %s: %s", serial, self._kind_refusal(serial, wire.AUTH_X509))
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
        if broker is not None and broker.session(client_id) not in (None, client_session):
            return  # a replaced connection: the client id is connected again through a new one
        if self.hooks.on_session:
            await self.hooks.on_session(client_session, False)

    async def on_broker_message_broadcast(self, *, client_id: str, message: Any,
                                          client_session: Session | None = None) -> None:
        # FleetBroker passes the publishing session (a PUBLISH or a last will that passed the ACL).
        if self.hooks.on_message is not None and client_session is not None:
            await self.hooks.on_message(client_session, message.topic, bytes(message.data or b""))
