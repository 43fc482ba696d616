"""The device agent: from agent.env to a live, managed device.

First boot: connect with the one-time init key, make a key pair on the device, send a CSR,
store the certificate and token the platform returns. Every boot after that: connect with the
stored credentials, announce the device (Birth) and wait for the platform's end-to-end Ack
before calling the device live, then serve the platform until powered off.

One Agent is one device. It is a single coroutine with no thread of its own, so a simulator
runs thousands of them on one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import uuid
from collections.abc import Callable

import aiomqtt

from agent import wire
from agent.aiomqtt_compat import Client, MqttConnectError
from agent.asyncio_compat import LightEvent
from agent.backoff import Backoff
from agent.env import AgentEnv
from agent.hardware import Hardware
from agent.identity import new_key_and_csr
from agent.manager import DeviceManager
from agent.state import Credentials, StateDir
from agent.tls import SHARED_TLS, TlsContexts

__all__ = ["SHARED_TLS", "Agent", "AgentError", "CredentialsRefused", "InitKeyRefused", "NotLive", "TlsContexts",
           "TlsVerificationFailed"]

log = logging.getLogger("fleetrig.agent")

# CONNACK codes that mean "these credentials will never work", as opposed to a passing fault.
_REFUSED_CODES = {4, 5, 134, 135}  # MQTT 3.1.1 codes and what paho 2 maps them to


class AgentError(Exception):
    """A fault the agent cannot get past by retrying; the message says what to do."""


class InitKeyRefused(AgentError):
    pass


class CredentialsRefused(AgentError):
    pass


class NotLive(AgentError):
    """The device did not come live in the time it was given; the message has the last error."""


class TlsVerificationFailed(AgentError):
    """The broker's certificate does not verify against CA_CERT (raised only when waiting to be live)."""


class Agent:
    """One device's agent."""

    def __init__(
        self,
        env: AgentEnv,
        state: StateDir,
        hardware: Hardware,
        *,
        tls: TlsContexts | None = None,
        keepalive: int = 60,
        ack_timeout: float = 10.0,
        max_backoff: float = 10.0,
        min_backoff: float = 0.5,
        manage: bool = True,
        on_live: Callable[[], None] | None = None,
    ) -> None:
        self.env = env
        self.state = state
        self.hardware = hardware
        self.tls = tls or SHARED_TLS
        self.keepalive = keepalive
        self.ack_timeout = ack_timeout
        self.backoff = Backoff(min_backoff, max_backoff)
        #: Commands, telemetry and events; None for a device that only registers and stays online.
        self.manager = DeviceManager(env, state, hardware) if manage else None
        #: Called (on the loop) each time the device becomes live, right after `live` is set.
        self.on_live = on_live
        #: Called with each wait before a retry, and the error that caused it (tests, progress).
        self.on_retry: Callable[[float, str], None] | None = None
        self.serial = env.serial
        #: Set while a session is live; cleared when that session is lost.
        self.live: asyncio.Event = LightEvent()
        self.connected = False
        self.connects = 0
        self.last_error: str = ""
        self._seq = 0
        self._acks: dict[str, asyncio.Future[wire.Ack]] = {}
        self._client: aiomqtt.Client | None = None
        self._boot_id = ""

    # -- public -------------------------------------------------------------------------------

    async def run(self, *, until_live: bool = False) -> None:
        """Run the device until cancelled (power off), or until live when `until_live`.

        Raises AgentError when the platform refuses the device for good.
        """
        # State writes fsync; off the event loop, which a simulator shares between thousands of agents.
        boot = await asyncio.to_thread(self.state.next_boot)
        self._boot_id = f"{boot}-{uuid.uuid4().hex[:8]}"
        telemetry = asyncio.create_task(self.manager.run_telemetry()) if self.manager and not until_live else None
        try:
            await self._lifecycle(until_live)
        finally:
            if telemetry is not None:
                telemetry.cancel()
                await asyncio.gather(telemetry, return_exceptions=True)
            if self.manager is not None:
                await self.manager.stop()

    async def run_until_live(self, timeout: float) -> None:
        """Register if need be and come live within `timeout` seconds, then return.

        Raises AgentError when the platform refuses the device or TLS verification fails, and
        NotLive naming the last error when the time runs out.
        """
        try:
            async with asyncio.timeout(timeout):
                await self.run(until_live=True)
        except TimeoutError:
            raise NotLive(f"{self.serial} not live after {timeout:.0f}s: "
                          f"{self.last_error or 'no answer from the platform'}") from None

    async def _lifecycle(self, until_live: bool) -> None:
        while True:
            if self.manager is not None and self.manager.decommissioned:
                raise CredentialsRefused(f"{self.serial}: decommissioned; its credentials are gone")
            try:
                creds = self.state.credentials()
                if creds is None or creds.serial != self.serial:
                    creds = await self._register()
                await self._session(creds, until_live=until_live)
                if until_live:
                    return
            except AgentError:
                raise
            except (aiomqtt.MqttError, OSError, TimeoutError, ssl.SSLError, wire.WireError) as exc:
                self._failed(exc, until_live)
            finally:
                self.connected = False
                self._client = None
            if self.live.is_set():  # the session was live: one lost connection is retried soon
                self.live.clear()
                self.backoff.reset()
            delay = self.backoff.next_delay()
            if self.on_retry is not None:
                self.on_retry(delay, self.last_error)
            log.debug("%s: %s; retrying in %.2fs", self.serial, self.last_error, delay)
            await asyncio.sleep(delay)

    def _failed(self, exc: BaseException, until_live: bool) -> None:
        """Note why this try failed; a TLS verification failure is named as such, and ends a wait for live."""
        previous = self.last_error
        verify = _verification_failure(exc)
        if verify is not None:
            self.last_error = (f"TLS verification failed: the broker {self.env.broker_host}:{self.env.broker_port} "
                               f"shows a certificate that CA_CERT in agent.env does not sign ({verify})")
            if until_live:
                raise TlsVerificationFailed(f"{self.serial}: {self.last_error}") from None
        else:
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
        if self.last_error != previous:  # each new reason once, repeats at debug level
            # A CA that does not match is a misconfiguration; a refused connection is usually an outage.
            level = logging.WARNING if verify is not None else logging.INFO
            log.log(level, "%s: %s; retrying with backoff up to %.0fs", self.serial, self.last_error, self.backoff.cap)

    # -- first boot ---------------------------------------------------------------------------

    def _client_for(self, password: str | None, tls_context: ssl.SSLContext | None,
                    will: aiomqtt.Will | None = None) -> Client:
        return Client(
            self.env.broker_host,
            self.env.broker_port,
            identifier=self.serial,
            username=self.serial,
            password=password,
            tls_context=tls_context if self.env.uses_tls else None,
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=True,
            keepalive=self.keepalive,
            will=will,
            timeout=self.ack_timeout,
        )

    async def _register(self) -> Credentials:
        """The first-boot exchange over an init-key session; returns stored credentials."""
        key_pem, csr_pem = new_key_and_csr(self.serial)
        client = self._client_for(
            wire.INIT_PASSWORD_PREFIX + self.env.init_key, self.tls.for_ca(self.env.ca_cert_pem)
        )
        response: wire.RegisterResponse | None = None
        try:
            async with client:
                await client.subscribe(wire.topic(self.serial, wire.REGISTER_RESPONSE), qos=1)
                await client.publish(
                    wire.topic(self.serial, wire.REGISTER_REQUEST),
                    wire.RegisterRequest(csr_pem, self.env.auth).to_bytes(),
                    qos=1,
                )
                async with asyncio.timeout(self.ack_timeout * 3):
                    message = await client.next_message()
                response = wire.RegisterResponse.parse(message.payload)
        except aiomqtt.MqttCodeError as exc:
            if isinstance(exc, MqttConnectError) and _code(exc) in _REFUSED_CODES:
                raise InitKeyRefused(
                    f"{self.serial}: the platform refused the init key in agent.env (already used, "
                    f"replaced by a reissue, or the device was disposed); have the operator run "
                    f"'fleetrig pms provisioning reissue {self.serial}' and place the new agent.env"
                ) from None
            raise
        finally:
            client.release()
        if response is None:
            raise TimeoutError("the broker closed the registration session before the platform answered")
        if not response.ok and response.error == wire.REGISTER_RETRY_LATER:
            raise _PlatformBusy(f"registration: {response.error}")
        if not response.ok:
            raise InitKeyRefused(f"{self.serial}: registration refused by the platform: {response.error}")
        log.debug("%s: registered, storing credentials", self.serial)
        return await asyncio.to_thread(
            self.state.save_credentials,
            self.serial, self.env.auth, key_pem, response.certificate_pem, response.token
        )

    # -- normal operation ---------------------------------------------------------------------

    async def _session(self, creds: Credentials, *, until_live: bool) -> None:
        password = wire.TOKEN_PASSWORD_PREFIX + creds.token if creds.auth == wire.AUTH_TOKEN else None
        will = aiomqtt.Will(wire.topic(self.serial, wire.STATUS), wire.offline_status(), qos=1)
        client = self._client_for(password, self.tls.for_device(self.env.ca_cert_pem, creds), will)
        try:
            async with client:
                self._client = client
                self.connected = True
                self.connects += 1
                await client.subscribe(
                    [(wire.topic(self.serial, wire.ACK), 1),
                     (wire.topic(self.serial, wire.RPC_REQUEST + "/+"), 1)]
                )
                reader = asyncio.create_task(self._read(client))
                try:
                    await self._announce(client)
                    self.live.set()
                    if self.on_live is not None:
                        self.on_live()
                    if until_live:
                        return
                    if self.manager is not None:
                        await self.manager.connected(lambda t, p: client.publish(t, p, qos=1))
                    await reader
                finally:
                    if self.manager is not None:
                        self.manager.disconnected()
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                        await reader
        except MqttConnectError as exc:
            if _code(exc) in _REFUSED_CODES:
                raise CredentialsRefused(
                    f"{self.serial}: the platform refused this device's credentials "
                    "(it was disposed or decommissioned); it cannot connect again"
                ) from None
            raise
        finally:
            client.release()

    async def _announce(self, client: Client) -> None:
        """Publish a Birth and wait for the platform's Ack; resend on silence."""
        self._seq += 1
        birth = wire.Birth(self._seq, self.hardware.firmware_version(), self.hardware.facts(), self._boot_id)
        ref = f"birth-{birth.seq}"
        for _attempt in range(3):
            future: asyncio.Future[wire.Ack] = asyncio.get_running_loop().create_future()
            self._acks[ref] = future
            await client.publish(wire.topic(self.serial, wire.STATUS), birth.to_bytes(), qos=1)
            try:
                ack = await asyncio.wait_for(future, self.ack_timeout)
            except TimeoutError:
                continue
            finally:
                self._acks.pop(ref, None)
            if not ack.ok:
                raise CredentialsRefused(f"{self.serial}: the platform refused the device: {ack.error}")
            return
        raise TimeoutError(f"no acknowledgement of the birth message in {3 * self.ack_timeout:.0f}s")

    async def _read(self, client: Client) -> None:
        while True:
            message = await client.next_message()
            name = str(message.topic)
            try:
                _, suffix = wire.split_topic(name)
                if suffix == wire.ACK:
                    ack = wire.Ack.parse(message.payload)
                    if self.manager is not None and self.manager.on_ack(ack):
                        continue
                    future = self._acks.get(ack.ref)
                    if future and not future.done():
                        future.set_result(ack)
                elif suffix.startswith(wire.RPC_REQUEST + "/") and self.manager is not None:
                    self.manager.on_rpc(suffix[len(wire.RPC_REQUEST) + 1:], bytes(message.payload))
            except wire.WireError as exc:
                log.warning("%s: ignored a message on %s: %s", self.serial, name, exc)


class _PlatformBusy(OSError):
    """The platform could not answer a registration now ('retry later'): retried with backoff."""


def _verification_failure(exc: BaseException) -> str | None:
    """The certificate verification error behind `exc` (aiomqtt hides it as the context), if any."""
    seen = 0
    cause: BaseException | None = exc
    while cause is not None and seen < 5:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return cause.verify_message or str(cause)
        if "CERTIFICATE_VERIFY_FAILED" in str(cause):
            return str(cause)[:200]
        cause = cause.__cause__ or cause.__context__
        seen += 1
    return None


def _code(exc: aiomqtt.MqttCodeError) -> int:
    rc = exc.rc
    return int(getattr(rc, "value", rc)) if rc is not None else -1
