"""Hostile devices against the real broker over TLS: forged wills, session hijack attempts,
oversized and malformed packets, retained floods, frozen and silent connections, the wrong
credential kind. Each test mounts the attack with the project's own credentials and shows it
failed: the victim received nothing and kept working, the broker kept nothing it should not.

Raw packets are written by hand (tests/test_broker_abuse.py: _raw_*) where a client library
would refuse to send them or would wait for the whole packet.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import subprocess
import sys
import tomllib
from pathlib import Path

import aiomqtt
import paho.mqtt.client as paho
import pytest

from agent import wire
from agent.env import AgentEnv
from agent.state import StateDir
from harness.broker.limits import BrokerLimits
from harness.pytest_plugin.fixtures import RunningPlatform
from tests.conftest import boot, connect_refused, mqtt_client, provision, tls_context, wait_for

ROOT = Path(__file__).resolve().parent.parent
#: Tight deadlines so the keepalive and connect tests finish in seconds.
LIMITS = BrokerLimits(connect_timeout=1.5, sweep_interval=0.2)
#: A broker with one unbound listener and no plugins, for tests of its own logic.
BARE_BROKER = {"listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:0"}}, "plugins": {}}


@pytest.fixture
def fleetrig_broker_limits() -> BrokerLimits:
    return LIMITS


# -- raw MQTT 3.1.1 -----------------------------------------------------------------------------


def _raw_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _raw_str(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(data)) + data


def _raw_connect(client_id: str, *, username: str | None = None, password: str | None = None,
                 keepalive: int = 60, clean: bool = True, will: tuple[str, bytes, bool] | None = None) -> bytes:
    """A CONNECT; `will` is (topic, payload, retain), sent with QoS 1."""
    flags = (0x02 if clean else 0) | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    if will is not None:
        flags |= 0x04 | 0x08 | (0x20 if will[2] else 0)
    body = _raw_str("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + _raw_str(client_id)
    if will is not None:
        body += _raw_str(will[0]) + _raw_str(will[1])
    if username is not None:
        body += _raw_str(username)
    if password is not None:
        body += _raw_str(password)
    return bytes([0x10]) + _raw_length(len(body)) + body


async def _raw_session(env: AgentEnv, creds, *, keepalive: int = 60, will: tuple[str, bytes, bool] | None = None
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection with the device's certificate and an accepted CONNECT."""
    reader, writer = await asyncio.open_connection(
        env.broker_host, env.broker_port, ssl=tls_context(env, creds.cert_path, creds.key_path))
    writer.write(_raw_connect(creds.serial, username=creds.serial, keepalive=keepalive, will=will))
    await writer.drain()
    connack = await asyncio.wait_for(reader.readexactly(4), 10)
    assert connack == b"\x20\x02\x00\x00", connack
    return reader, writer


async def _closed_by_broker(reader: asyncio.StreamReader, timeout: float = 15) -> bool:
    """True once the broker has closed the connection (bounded wait)."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError):
        pass
    return True


# -- helpers --------------------------------------------------------------------------------------


async def _registered(platform: RunningPlatform, catalog, tmp_path: Path, serials: list[str], **kwargs):
    """Provision and first-boot `serials`, then power their agents off; return (envs, creds)."""
    envs = await asyncio.to_thread(provision, platform, catalog, serials, **kwargs)
    fleet = await boot(envs, tmp_path / "devices")
    await fleet.stop()
    creds = {s: StateDir(tmp_path / "devices" / s).credentials() for s in serials}
    assert all(creds.values())
    broker = platform.platform.broker
    await wait_for(lambda: not any(broker.is_connected(s) for s in serials))
    return envs, creds


def _client(env: AgentEnv, client_id: str, *, tls: ssl.SSLContext | None = None, **kwargs) -> aiomqtt.Client:
    """An aiomqtt client aimed at the broker, with any of aiomqtt's options (clean_session, will)."""
    return aiomqtt.Client(env.broker_host, env.broker_port, identifier=client_id, username=client_id,
                          tls_context=tls or tls_context(env), protocol=aiomqtt.ProtocolVersion.V311,
                          timeout=10, **kwargs)


def _as_device(env: AgentEnv, creds, **kwargs) -> aiomqtt.Client:
    """A client with the device's own certificate (the devices here are provisioned for x509)."""
    return _client(env, creds.serial, tls=tls_context(env, creds.cert_path, creds.key_path), **kwargs)


async def _nothing_arrives(client: aiomqtt.Client, seconds: float = 1.5) -> list:
    got = []
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(seconds):
            async for message in client.messages:
                got.append(message)
    return got


async def _victim_still_served(platform: RunningPlatform, victim: aiomqtt.Client, serial: str) -> None:
    """The platform's RPC topic still reaches the victim, and the victim's birth is acknowledged."""
    await victim.subscribe(wire.topic(serial, wire.ACK), qos=1)
    await platform.platform.broker.publish(wire.rpc_request_topic(serial, "probe"), b'{"probe": 1}')
    await victim.publish(wire.topic(serial, wire.STATUS), wire.Birth(5, "real-1.0", {}).to_bytes(), qos=1)
    seen = set()
    async with asyncio.timeout(10):
        async for message in victim.messages:
            seen.add(str(message.topic))
            if len(seen) == 2:
                break
    assert seen == {wire.rpc_request_topic(serial, "probe"), wire.topic(serial, wire.ACK)}


# -- 1. last wills ----------------------------------------------------------------------------------


async def test_will_on_another_devices_topics_is_refused(fleetrig_platform, fleetrig_catalog, tmp_path):
    envs, creds = await _registered(fleetrig_platform, fleetrig_catalog, tmp_path, ["WA-001", "WV-001"])
    attacker, victim_serial = creds["WA-001"], "WV-001"
    env = envs["WA-001"]
    broker = fleetrig_platform.platform.broker
    command = b'{"v": 1, "method": "reboot", "params": {}}'
    async with _as_device(envs[victim_serial], creds[victim_serial]) as victim:
        await victim.subscribe(wire.topic(victim_serial, wire.RPC_REQUEST + "/+"), qos=1)
        for retain in (False, True):
            will = aiomqtt.Will(wire.rpc_request_topic(victim_serial, "x"), command, qos=1, retain=retain)
            client = _as_device(env, attacker, will=will)
            assert "authori" in (await connect_refused(client)).lower()
        # A will on the attacker's own telemetry, retained: not a topic that keeps retained messages.
        client = _as_device(env, attacker, will=aiomqtt.Will(wire.topic("WA-001", wire.TELEMETRY), b"{}", retain=True))
        assert "authori" in (await connect_refused(client)).lower()
        assert broker.stats.wills_refused == 3 and broker.stats.wills_published == 0
        # Had the CONNECT been accepted, dropping the socket would publish the will now; the
        # victim gets nothing, and the platform still reaches it.
        assert await _nothing_arrives(victim) == []
        await _victim_still_served(fleetrig_platform, victim, victim_serial)
    assert broker.retained_topics() == {}


async def test_own_will_fires_through_the_acl_and_reaches_the_platform(fleetrig_platform, fleetrig_catalog,
                                                                        tmp_path):
    envs, creds = await _registered(fleetrig_platform, fleetrig_catalog, tmp_path, ["WO-001"])
    broker = fleetrig_platform.platform.broker
    env, own = envs["WO-001"], creds["WO-001"]
    will_topic = wire.topic("WO-001", wire.STATUS)
    _, writer = await _raw_session(env, own, will=(will_topic, wire.offline_status(), True))
    await wait_for(lambda: fleetrig_platform.client.device("WO-001")["connectivity"] == "online")
    writer.transport.abort()  # the socket drops without DISCONNECT
    await wait_for(lambda: broker.stats.wills_published == 1)
    await wait_for(lambda: fleetrig_platform.client.device("WO-001")["connectivity"] == "offline")
    # A retained will on the device's status topic is kept (the one topic that keeps one).
    assert broker.retained_topics() == {will_topic: wire.offline_status()}
    # The retained caps apply to a will when it fires: one over the device's share is delivered
    # (the platform hears it) but not kept.
    big_will = b'{"v": 1, "state": "offline", "pad": "' + b"x" * LIMITS.retained_bytes_per_device + b'"}'
    _, writer = await _raw_session(env, own, will=(will_topic, big_will, True))
    await wait_for(lambda: broker.is_connected("WO-001"))
    writer.transport.abort()
    await wait_for(lambda: broker.stats.wills_published == 2)
    await wait_for(lambda: broker.stats.retained_refused == 1)
    assert broker.retained_topics() == {will_topic: wire.offline_status()}


async def test_authorised_reconnect_takes_over_and_resumes(fleetrig_platform, fleetrig_catalog, tmp_path):
    """The path a CONNECT takes once authorised: the live connection is closed, the stored session
    (clean_session=0) resumed with its subscriptions, and the new connection is served."""
    envs, creds = await _registered(fleetrig_platform, fleetrig_catalog, tmp_path, ["TO-001"])
    broker = fleetrig_platform.platform.broker
    env, own = envs["TO-001"], creds["TO-001"]
    reader, writer = await _raw_session(env, own)
    first = broker.session("TO-001")
    async with _as_device(env, own, clean_session=False) as second:
        assert await _closed_by_broker(reader)  # [MQTT-3.1.4-2]: the first connection is closed
        writer.close()
        await second.subscribe(wire.topic("TO-001", wire.RPC_REQUEST + "/+"), qos=1)
        assert broker.is_connected("TO-001")
    await wait_for(lambda: not broker.is_connected("TO-001"))
    stored = broker.session("TO-001")
    assert stored is not None and stored is not first
    # A third connection resumes the stored session: its subscription is still there.
    async with _as_device(env, own, clean_session=False) as third:
        assert broker.session("TO-001") is stored
        await broker.publish(wire.rpc_request_topic("TO-001", "again"), b'{"probe": 2}')
        async with asyncio.timeout(10):
            async for message in third.messages:
                assert str(message.topic) == wire.rpc_request_topic("TO-001", "again")
                break
    await wait_for(lambda: fleetrig_platform.client.device("TO-001")["connectivity"] == "offline")


# -- 2. a refused CONNECT changes nothing -------------------------------------------------------------


async def test_refused_connect_does_not_touch_the_live_session(fleetrig_platform, fleetrig_catalog, tmp_path):
    envs, creds = await _registered(fleetrig_platform, fleetrig_catalog, tmp_path, ["HJ-001"])
    serial, env = "HJ-001", envs["HJ-001"]
    broker = fleetrig_platform.platform.broker
    before = await asyncio.to_thread(fleetrig_platform.client.device, serial)
    forged_birth = wire.Birth(seq=99, firmware_version="evil-9.9", facts={"product": "forged"}).to_bytes()
    victim = _as_device(env, creds[serial])
    await victim.__aenter__()
    try:
        await victim.subscribe(wire.topic(serial, wire.RPC_REQUEST + "/+"), qos=1)
        session = broker.session(serial)
        # No credentials at all, then wrong ones, with the victim's client id, clean_session=0 and
        # a will that would plant a forged birth in the registry when the victim drops.
        will = aiomqtt.Will(wire.topic(serial, wire.STATUS), forged_birth, qos=1)
        for password in (None, "token:wrong", "init:" + "x" * 32):
            attacker = _client(env, serial, password=password, clean_session=False, will=will)
            assert "authori" in (await connect_refused(attacker)).lower()
            # ... and with clean_session=1, which upstream uses to delete the live session's subscriptions.
            attacker = _client(env, serial, password=password, will=will)
            assert "authori" in (await connect_refused(attacker)).lower()
        assert broker.session(serial) is session and broker.is_connected(serial)
        await _victim_still_served(fleetrig_platform, victim, serial)
        # The victim's socket drops without DISCONNECT: had the attacker's will been copied into
        # its session, the forged birth would be published now.
        victim._client.socket().shutdown(socket.SHUT_RDWR)
        await wait_for(lambda: not broker.is_connected(serial))
    finally:
        with contextlib.suppress(aiomqtt.MqttError):
            await victim.__aexit__(None, None, None)
    await wait_for(lambda: not broker.is_connected(serial))
    assert broker.stats.wills_published == 0
    after = await asyncio.to_thread(fleetrig_platform.client.device, serial)
    assert after["firmware_version"] == "real-1.0" != before["firmware_version"]
    assert after["facts"].get("product") != "forged"


# -- 4. memory: packet size and retained messages ------------------------------------------------------


async def test_oversized_packet_closes_the_connection_before_its_body(fleetrig_platform, fleetrig_catalog,
                                                                      tmp_path):
    envs, creds = await _registered(fleetrig_platform, fleetrig_catalog, tmp_path, ["OV-001", "OV-002"])
    broker = fleetrig_platform.platform.broker
    env, attacker = envs["OV-001"], creds["OV-001"]
    async with _as_device(envs["OV-002"], creds["OV-002"]) as victim:
        await victim.subscribe(wire.topic("OV-002", wire.RPC_REQUEST + "/+"), qos=1)
        for i in range(10):
            reader, writer = await _raw_session(env, attacker)
            # A retained PUBLISH announcing 10 MiB on the device's own rpc/response topic: only
            # the header and the topic are sent, and the broker closes without waiting for the rest.
            topic = _raw_str(wire.rpc_response_topic("OV-001", f"r{i}"))
            writer.write(bytes([0x31]) + _raw_length(10 * 1024 * 1024) + topic + b"x" * 1024)
            await writer.drain()
            assert await _closed_by_broker(reader)
            writer.close()
        # The CONNECT itself is bounded too.
        reader, writer = await asyncio.open_connection(
            env.broker_host, env.broker_port, ssl=tls_context(env, attacker.cert_path, attacker.key_path))
        writer.write(bytes([0x10]) + _raw_length(wire.MAX_PACKET_BYTES + 1) + _raw_str("MQTT"))
        await writer.drain()
        assert await _closed_by_broker(reader)
        writer.close()
        assert broker.stats.oversized_packets == 11
        assert broker.retained_topics() == {}
        await _victim_still_served(fleetrig_platform, victim, "OV-002")


async def test_retained_messages_are_refused_or_capped_per_device(fleetrig_platform, fleetrig_catalog, tmp_path):
    envs, creds = await _registered(fleetrig_platform, fleetrig_catalog, tmp_path, ["RT-001"])
    broker = fleetrig_platform.platform.broker
    env, own = envs["RT-001"], creds["RT-001"]
    big = b'{"pad": "' + b"x" * (200 * 1024) + b'"}'
    async with _as_device(env, own) as device:
        # A retained flood on topics the device may publish but that keep no retained message.
        for i in range(50):
            await device.publish(wire.rpc_response_topic("RT-001", f"r{i}"), big, qos=1, retain=True)
            await device.publish(wire.topic("RT-001", wire.TELEMETRY), big, qos=1, retain=True)
        # A status larger than the device's retained share, then one within it.
        await device.publish(wire.topic("RT-001", wire.STATUS), big, qos=1, retain=True)
        small = wire.Birth(1, "rt-1.0", {}).to_bytes()
        await device.publish(wire.topic("RT-001", wire.STATUS), small, qos=1, retain=True)
        await wait_for(lambda: broker.retained_topics() == {wire.topic("RT-001", wire.STATUS): small})
        assert broker.stats.retained_refused == 101
        # An empty retained message clears it.
        await device.publish(wire.topic("RT-001", wire.STATUS), b"", qos=1, retain=True)
        await wait_for(lambda: broker.retained_topics() == {})
        assert broker.retained.held("RT-001") == 0
    # The device was never cut off: its messages were delivered, only not retained.
    assert broker.stats.oversized_packets == 0


async def test_malformed_packets_close_only_the_attackers_connection(fleetrig_platform, fleetrig_catalog,
                                                                     tmp_path):
    envs, creds = await _registered(fleetrig_platform, fleetrig_catalog, tmp_path, ["MF-001", "MF-002"])
    broker = fleetrig_platform.platform.broker
    env, attacker = envs["MF-001"], creds["MF-001"]
    garbage = [
        b"\xf0\x00",  # reserved packet type 15
        b"\x10\x02\x00\x00",  # a second CONNECT
        b"\x30\x05\x00\x10ab",  # PUBLISH whose topic length runs past the packet
        b"\x20\x02\x00\x00",  # CONNACK, a server's packet
        b"\x30\x06\x00\x01#abc",  # PUBLISH on a wildcard topic
    ]
    async with _as_device(envs["MF-002"], creds["MF-002"]) as victim:
        await victim.subscribe(wire.topic("MF-002", wire.RPC_REQUEST + "/+"), qos=1)
        for packet in garbage:
            reader, writer = await _raw_session(env, attacker)
            writer.write(packet + b"\x00" * 32)
            await writer.drain()
            assert await _closed_by_broker(reader), packet
            writer.close()
        await wait_for(lambda: broker.stats.malformed_packets >= len(garbage))
        # Garbage instead of a CONNECT.
        reader, writer = await asyncio.open_connection(env.broker_host, env.broker_port, ssl=tls_context(env))
        writer.write(b"\x82\x05\x00\x01\x00\x00\x00")
        await writer.drain()
        assert await _closed_by_broker(reader)
        writer.close()
        assert await _nothing_arrives(victim, 0.5) == []
        await _victim_still_served(fleetrig_platform, victim, "MF-002")


async def test_unreleased_qos2_messages_are_bounded(fleetrig_platform, fleetrig_catalog, tmp_path):
    envs, creds = await _registered(fleetrig_platform, fleetrig_catalog, tmp_path, ["Q2-001"])
    broker = fleetrig_platform.platform.broker
    # QoS 2 as the protocol means it (each PUBLISH released) is served however many are sent.
    event = wire.DeviceEvent("note", "qos 2").to_bytes()
    async with _as_device(envs["Q2-001"], creds["Q2-001"]) as honest:
        for _ in range(3 * LIMITS.max_inflight_qos2):
            await honest.publish(wire.topic("Q2-001", wire.EVENTS), event, qos=2)
    assert broker.stats.malformed_packets == 0
    reader, writer = await _raw_session(envs["Q2-001"], creds["Q2-001"])
    topic = _raw_str(wire.topic("Q2-001", wire.EVENTS))
    payload = b'{"pad": "' + b"x" * 100_000 + b'"}'
    # QoS 2 PUBLISHes whose PUBREL never comes: amqtt holds each one until it does.
    for packet_id in range(1, LIMITS.max_inflight_qos2 + 5):
        body = topic + struct.pack("!H", packet_id) + payload
        writer.write(bytes([0x34]) + _raw_length(len(body)) + body)
    await writer.drain()
    assert await _closed_by_broker(reader)
    writer.close()
    assert broker.stats.malformed_packets == 1


# -- 5. keepalive and idle connections ----------------------------------------------------------------


async def test_frozen_client_is_closed_after_one_and_a_half_keepalives(fleetrig_platform, fleetrig_catalog,
                                                                       tmp_path):
    envs, creds = await _registered(fleetrig_platform, fleetrig_catalog, tmp_path, ["KA-001"])
    broker = fleetrig_platform.platform.broker
    env, own = envs["KA-001"], creds["KA-001"]
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="KA-001", protocol=paho.MQTTv311)
    client.username_pw_set("KA-001")
    client.tls_set_context(tls_context(env, own.cert_path, own.key_path))
    client.will_set(wire.topic("KA-001", wire.STATUS), wire.offline_status(), qos=1)
    connected = asyncio.Event()
    loop = asyncio.get_running_loop()
    client.on_connect = lambda *args: loop.call_soon_threadsafe(connected.set)
    await asyncio.to_thread(client.connect, env.broker_host, env.broker_port, 2)
    client.loop_start()
    try:
        await asyncio.wait_for(connected.wait(), 10)
        await wait_for(lambda: fleetrig_platform.client.device("KA-001")["connectivity"] == "online")
        # The client freezes: its socket stays open, and it sends nothing more (no PINGREQ).
        await asyncio.to_thread(client.loop_stop)
        await wait_for(lambda: not broker.is_connected("KA-001"), timeout=20)
        assert broker.stats.keepalive_expired == 1 and broker.stats.wills_published == 1
        await wait_for(lambda: fleetrig_platform.client.device("KA-001")["connectivity"] == "offline")
    finally:
        client.loop_stop()
        client.socket() and client.socket().close()


async def test_connection_without_connect_is_closed(fleetrig_platform, fleetrig_catalog):
    envs = await asyncio.to_thread(provision, fleetrig_platform, fleetrig_catalog, ["NC-001"])
    env = envs["NC-001"]
    broker = fleetrig_platform.platform.broker
    # TLS established, then silence.
    reader, writer = await asyncio.open_connection(env.broker_host, env.broker_port, ssl=tls_context(env))
    assert await _closed_by_broker(reader)
    writer.close()
    assert broker.stats.connect_timeouts == 1
    # TCP only: the TLS handshake never starts.
    reader, writer = await asyncio.open_connection(env.broker_host, env.broker_port)
    assert await _closed_by_broker(reader)
    writer.close()
    # Half a CONNECT.
    reader, writer = await asyncio.open_connection(env.broker_host, env.broker_port, ssl=tls_context(env))
    writer.write(_raw_connect("NC-001", username="NC-001")[:10])
    await writer.drain()
    assert await _closed_by_broker(reader)
    writer.close()
    assert broker.stats.connect_timeouts == 2


def test_sweep_closes_only_silent_sessions():
    """The sweep's rule, on the broker's own objects: silent past 1.5 x keepalive, or no keepalive."""
    from harness.broker.amqtt_compat import FleetSession
    from harness.broker.server import BrokerHooks, FleetBroker

    class Handler:
        def __init__(self, last: float) -> None:
            self.last_packet_at, self.aborted = last, False

        def abort(self) -> None:
            self.aborted = True

    async def run() -> dict[str, bool]:
        broker = FleetBroker(BARE_BROKER, hooks=BrokerHooks())
        handlers = {}
        for client_id, keepalive, silent in (("a", 2, 2.9), ("b", 2, 3.1), ("c", 0, 1e6), ("d", 60, 89)):
            session = FleetSession()
            session.client_id, session.keep_alive = client_id, keepalive
            session.transitions.connect()
            handlers[client_id] = Handler(1000.0 - silent)
            broker._sessions[client_id] = (session, handlers[client_id])
        assert broker.sweep(now=1000.0) == 1
        return {client_id: handler.aborted for client_id, handler in handlers.items()}

    assert asyncio.run(run()) == {"a": False, "b": True, "c": False, "d": False}


# -- 10. one credential kind per device --------------------------------------------------------------


async def test_device_logs_in_only_with_its_provisioned_credential_kind(fleetrig_platform, fleetrig_catalog,
                                                                        tmp_path):
    _, x509_creds = await _registered(fleetrig_platform, fleetrig_catalog, tmp_path / "x", ["AK-X509"])
    envs_t, token_creds = await _registered(fleetrig_platform, fleetrig_catalog, tmp_path / "t", ["AK-TOKEN"],
                                            auth=wire.AUTH_TOKEN)
    cert_dev, token_dev = x509_creds["AK-X509"], token_creds["AK-TOKEN"]
    env = envs_t["AK-TOKEN"]
    # Both devices were given a certificate and a token at registration.
    assert cert_dev.token and token_dev.cert_path.exists()
    for restarted in (False, True):
        if restarted:
            # The rule survives a restart: it is read from the registry, not only set at provisioning.
            await asyncio.to_thread(fleetrig_platform.restart)
        wrong_kind = [
            mqtt_client(env, client_id="AK-X509", username="AK-X509", password="token:" + cert_dev.token),
            _as_device(env, token_dev),
        ]
        for client in wrong_kind:
            assert "authori" in (await connect_refused(client)).lower()
        async with _as_device(env, cert_dev):
            pass
        async with mqtt_client(env, client_id="AK-TOKEN", username="AK-TOKEN", password="token:" + token_dev.token):
            pass


# -- compat, tuning, decoupling -----------------------------------------------------------------------


def test_amqtt_compat_refuses_another_amqtt_version():
    from harness.broker.amqtt_compat import AMQTT_VERSION

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = project["dependencies"] + project["optional-dependencies"]["platform"]
    assert f"amqtt=={AMQTT_VERSION}" in pins
    code = ("import importlib.metadata as m; real = m.version; "
            "m.version = lambda name: '0.13.0' if name == 'amqtt' else real(name); "
            "import harness.broker.amqtt_compat")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode != 0
    assert "amqtt 0.12.1 only" in out.stderr and "0.13.0 is installed" in out.stderr


_BUILD_A_BROKER = """
import asyncio, asyncio.sslproto, gc
gc.set_threshold(700, 10, 10)
import harness.broker.server, harness.cli.main, harness.platform.process, simulators.fleet

async def main():
    harness.broker.server.FleetBroker(%r, harness.broker.server.BrokerHooks())

asyncio.run(main())
print(gc.get_threshold(), asyncio.sslproto.SSLProtocol.max_size)
"""


def test_importing_and_building_the_broker_tunes_nothing():
    code = _BUILD_A_BROKER % (BARE_BROKER,)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["(700,", "10,", "10)", str(256 * 1024)]
    code = "import gc; from harness.broker.tuning import tune_process; tune_process(); print(gc.get_threshold()[0])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.stdout.strip() == "5000"


def test_broker_imports_nothing_of_the_platform():
    import ast

    for path in (ROOT / "harness" / "broker").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith("harness.platform"), (path.name, name)
    process = (ROOT / "harness" / "platform" / "process.py").read_text()
    assert "broker._sessions" not in process
