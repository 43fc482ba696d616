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
import collections
import contextlib
import functools
import logging
import random
import socket
import ssl
import threading
import uuid
from collections.abc import Callable
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from aiomqtt.exceptions import MqttConnectError

from agent import wire
from agent.env import AgentEnv
from agent.hardware import Hardware
from agent.identity import new_key_and_csr
from agent.manager import DeviceManager
from agent.state import Credentials, StateDir

log = logging.getLogger("fleetrig.agent")

# CONNACK codes that mean "these credentials will never work", as opposed to a passing fault.
_REFUSED_CODES = {4, 5, 134, 135}  # MQTT 3.1.1 codes and what paho 2 maps them to


class AgentError(Exception):
    """A fault the agent cannot get past by retrying; the message says what to do."""


class InitKeyRefused(AgentError):
    pass


class CredentialsRefused(AgentError):
    pass


class TlsContexts:
    """SSL contexts shared between the agents of one process.

    One context per platform CA serves every session that shows no client certificate
    (registration with the init key, token authentication). Devices that authenticate with
    their certificate share a second context per CA: each connection loads its device's
    certificate and key into it and creates its TLS connection at once, under a lock. OpenSSL
    gives the new connection its own reference to that certificate and key (SSL_new copies
    them), so the next device's load does not touch it. A context costs ~25 KiB and ~0.5 ms to
    make; one per device was a third of a simulated device's memory.
    """

    def __init__(self) -> None:
        self._by_ca: dict[str, ssl.SSLContext] = {}
        self._signing_by_ca: dict[str, ssl.SSLContext] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _new(ca_pem: str) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=ca_pem)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def for_ca(self, ca_pem: str) -> ssl.SSLContext:
        ctx = self._by_ca.get(ca_pem)
        if ctx is None:
            ctx = self._by_ca[ca_pem] = self._new(ca_pem)
        return ctx

    def for_device(self, ca_pem: str, creds: Credentials) -> ssl.SSLContext:
        if creds.auth == wire.AUTH_TOKEN:
            return self.for_ca(ca_pem)
        shared = self._signing_by_ca.get(ca_pem)
        if shared is None:
            shared = self._signing_by_ca[ca_pem] = self._new(ca_pem)
        return DeviceTlsContext(shared, self._lock, str(creds.cert_path), str(creds.key_path))  # type: ignore[return-value]


class DeviceTlsContext:
    """What paho needs of an SSLContext (`wrap_socket`, `check_hostname`) for one device.

    `wrap_socket` loads the device's certificate chain into the shared context and wraps the
    socket while holding the lock, so each connection carries its own device's certificate.
    paho calls it from aiomqtt's connect thread, off the event loop.
    """

    __slots__ = ("_certfile", "_keyfile", "_lock", "_shared")

    def __init__(self, shared: ssl.SSLContext, lock: threading.Lock, certfile: str, keyfile: str) -> None:
        self._shared = shared
        self._lock = lock
        self._certfile = certfile
        self._keyfile = keyfile

    @property
    def check_hostname(self) -> bool:
        return self._shared.check_hostname

    def wrap_socket(self, sock: Any, **kwargs: Any) -> ssl.SSLSocket:
        with self._lock:
            self._shared.load_cert_chain(self._certfile, self._keyfile)
            return self._shared.wrap_socket(sock, **kwargs)


class _NoJoin:
    """Stands in for asyncio.Queue's join() event on a queue nobody joins."""

    __slots__ = ()

    def set(self) -> None:
        pass

    def clear(self) -> None:
        pass


_NO_JOIN = _NoJoin()


class _MessageQueue(asyncio.Queue):  # type: ignore[type-arg]
    """aiomqtt's incoming-message queue without what an unbounded, never-joined queue never uses.

    A put on an unbounded queue never waits and aiomqtt never calls join(), so the put
    waiters and join()'s event (a deque each, ~600 bytes) are shared placeholders.
    """

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        if maxsize <= 0:
            self._putters = ()
            self._finished = _NO_JOIN

    async def join(self) -> None:
        raise NotImplementedError("nobody joins an agent's message queue")


class _Flag(asyncio.Event):
    """asyncio.Event that makes its waiter deque (~600 bytes) only when someone waits."""

    def __init__(self) -> None:
        super().__init__()
        self._waiters = ()  # type: ignore[assignment]

    async def wait(self) -> bool:
        if not self._value and not isinstance(self._waiters, collections.deque):
            self._waiters = collections.deque()
        return await super().wait()


#: Put in a client's message queue when its connection is gone: wakes the reader.
_GONE = object()


def _wake_reader(queue: asyncio.Queue, _future: asyncio.Future) -> None:  # type: ignore[type-arg]
    queue.put_nowait(_GONE)


class _Client(aiomqtt.Client):
    """aiomqtt's Client with the costs of many clients in one process taken out.

    * paho binds every socket to ("", 0) before it connects, and a bind to port 0 makes the
      kernel search the ephemeral ports for one that no socket (TIME_WAIT ones included) is
      bound to: with the thousands a fleet leaves behind, ~1-2 ms of kernel time per connect.
      A plain connect picks its port without that search. (Only when no bind address or
      port is asked for, which the agent never does.)
    * aiomqtt wakes every client once a second for paho's keepalive check; with thousands of
      devices on one loop that is thousands of wake-ups a second for a ping due once a minute.
      A quarter keepalive (1-15 s) still sends the ping before 1.25 keepalives, within the 1.5
      the broker allows [MQTT-3.1.2-24].
    * a packet is written as soon as it is queued when that happens on the loop's thread
      (aiomqtt registers a writer for each one: a self-pipe write, two epoll changes and a
      loop iteration per packet);
    * `next_message()` reads the queue directly (`messages` makes a task and an asyncio.wait
      per message, and keeps one of each per idle client): the end of the connection is a
      marker in the queue.
    * `release()` drops paho after the session: aiomqtt and paho reference each other (paho's
      callbacks are aiomqtt's bound methods), so a closed client otherwise waits for the
      cyclic garbage collector, and a fleet closes one per first boot.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("queue_type", _MessageQueue)
        super().__init__(*args, **kwargs)
        self._loop_thread = threading.get_ident()
        mqtt = self._client
        if not self._bind_address and not self._bind_port:
            mqtt._create_socket_connection = functools.partial(  # type: ignore[method-assign]
                socket.create_connection, (self._hostname, self._port), timeout=mqtt._connect_timeout
            )

    async def __aenter__(self) -> _Client:
        await super().__aenter__()
        self._disconnected.add_done_callback(functools.partial(_wake_reader, self._queue))
        return self

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # paho has a packet to send. aiomqtt always registers a writer for it, from any thread
        # (call_soon_threadsafe: a self-pipe write, two epoll changes, a loop iteration). On the
        # loop's own thread, outside paho's callbacks (paho's own rule for writing at once),
        # write now; register the writer only for what the socket did not take.
        if threading.get_ident() == self._loop_thread and client._in_callback_mutex.acquire(False):
            client._in_callback_mutex.release()
            try:
                client.loop_write()
            except Exception as exc:  # as aiomqtt's writer callback: the connection is broken
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)
                return
            if not client.want_write():
                return
        super()._on_socket_register_write(client, userdata, sock)

    async def next_message(self) -> aiomqtt.Message:
        """The next message; MqttError once the connection is gone and the queue is empty."""
        message = await self._queue.get()
        if message is _GONE:
            self._queue.put_nowait(_GONE)  # every later call fails the same way
            raise aiomqtt.MqttError("Disconnected during message iteration") from self._disconnected.exception()
        return message

    def release(self) -> None:
        task, self._misc_task = self._misc_task, None
        if task is not None and not task.done():
            task.cancel()
        self._client = None  # type: ignore[assignment]

    async def _misc_loop(self) -> None:
        interval = min(max(self._keepalive / 4, 1.0), 15.0)
        while (mqtt := self._client) is not None and mqtt.loop_misc() == paho.MQTT_ERR_SUCCESS:
            await asyncio.sleep(interval)


SHARED_TLS = TlsContexts()


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
        manage: bool = True,
        on_live: Callable[[], None] | None = None,
    ) -> None:
        self.env = env
        self.state = state
        self.hardware = hardware
        self.tls = tls or SHARED_TLS
        self.keepalive = keepalive
        self.ack_timeout = ack_timeout
        self.max_backoff = max_backoff
        #: Commands, telemetry and events; None for a device that only registers and stays online.
        self.manager = DeviceManager(env, state, hardware) if manage else None
        #: Called (on the loop) each time the device becomes live, right after `live` is set.
        self.on_live = on_live
        self.serial = env.serial
        self.live: asyncio.Event = _Flag()
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
        backoff = 0.5
        telemetry = asyncio.create_task(self.manager.run_telemetry()) if self.manager and not until_live else None
        try:
            await self._lifecycle(until_live, backoff)
        finally:
            if telemetry is not None:
                telemetry.cancel()
                await asyncio.gather(telemetry, return_exceptions=True)
            if self.manager is not None:
                await self.manager.stop()

    async def _lifecycle(self, until_live: bool, backoff: float) -> None:
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
                backoff = 0.5
            except AgentError:
                raise
            except (aiomqtt.MqttError, OSError, TimeoutError, ssl.SSLError, wire.WireError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.debug("%s: %s; retrying in %.1fs", self.serial, self.last_error, backoff)
            finally:
                self.connected = False
                self._client = None
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            if self.live.is_set():
                backoff = 0.5
            backoff = min(backoff * 2, self.max_backoff)

    # -- first boot ---------------------------------------------------------------------------

    def _client_for(self, password: str | None, tls_context: ssl.SSLContext | None,
                    will: aiomqtt.Will | None = None) -> _Client:
        return _Client(
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

    async def _announce(self, client: _Client) -> None:
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

    async def _read(self, client: _Client) -> None:
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


def _code(exc: aiomqtt.MqttCodeError) -> int:
    rc = exc.rc
    return int(getattr(rc, "value", rc)) if rc is not None else -1
