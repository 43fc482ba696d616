"""One device's bad messages never cost other devices their data (the real broker, over TLS).

A poisoning device publishes in the same batch window as other devices' telemetry, job results
and first-boot registrations. Refused input is stopped at the wire contract and counted against
the device that sent it; an item the contract lets through but the registry still refuses (here
a real SQLite trigger, standing for a constraint or a disk error on one device's rows) fails
alone: its batch is applied again item by item and everyone else's data is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiomqtt
from sqlalchemy import select, text

from agent import wire
from agent.identity import new_key_and_csr
from agent.state import StateDir
from harness.platform.models import Device, TelemetryRecord
from tests.conftest import boot, mqtt_client, provision, wait_for

POISONER, TELEMETRY_VICTIMS, JOB_VICTIMS, NEWCOMERS = "PZ-001", ["TV-001", "TV-002"], ["JV-001", "JV-002"], \
    ["RV-001", "RV-002"]
VICTIM_SEQ = 7001


def _nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


#: What the abuse report sent, one payload per field gone wrong.
POISON = [
    (wire.TELEMETRY, wire.encode({"v": 1, "seq": 1, "samples": [{"ts": 1e20, "cpu_percent": 1.0}]})),
    (wire.TELEMETRY, b'{"v": 1, "seq": 2, "samples": [{"ts": NaN, "cpu_percent": 1.0}]}'),
    (wire.TELEMETRY, wire.encode({"v": 1, "seq": 2**64, "samples": [{"cpu_percent": 1.0}]})),
    (wire.TELEMETRY, wire.encode({"v": 1, "seq": 3, "samples": [{"cpu_percent": 1e308, "x": _nested(900)}]})),
    (wire.TELEMETRY, b'{"v": 1, "seq": 4, "samples": [{"cpu_percent": 1e400}]}'),
    (wire.EVENTS, wire.encode({"v": 1, "kind": "x", "message": "m", "detail": _nested(900)})),
    (wire.STATUS, wire.encode({"v": 1, "state": "online", "seq": 2**64, "firmware_version": "1", "facts": {}})),
]


@dataclass
class Scene:
    fleet: object
    tokens: dict[str, str]
    envs: dict


async def _scene(platform, catalog, tmp_path) -> Scene:
    # Token devices: the raw clients below log in with the token, the one credential kind they have.
    envs = await asyncio.to_thread(provision, platform, catalog,
                                   [POISONER, *TELEMETRY_VICTIMS, *JOB_VICTIMS, *NEWCOMERS], auth=wire.AUTH_TOKEN)
    live = {s: envs[s] for s in (POISONER, *TELEMETRY_VICTIMS, *JOB_VICTIMS)}
    fleet = await boot(live, tmp_path / "devices")
    tokens = {}
    for serial in (POISONER, *TELEMETRY_VICTIMS):
        creds = StateDir(tmp_path / "devices" / serial).credentials()
        assert creds is not None and creds.token
        tokens[serial] = creds.token
        await fleet.power_off(serial)  # the raw client below speaks for it now
    await wait_for(lambda: not any(platform.platform.broker.is_connected(s) for s in tokens), timeout=20)
    # Every message of the next second lands in one batch.
    platform.platform.gateway.batch_window = 1.0
    return Scene(fleet, tokens, envs)


@contextlib.asynccontextmanager
async def _device_clients(scene: Scene) -> AsyncIterator[dict[str, aiomqtt.Client]]:
    async with contextlib.AsyncExitStack() as stack:
        clients = {}
        for serial, token in scene.tokens.items():
            clients[serial] = await stack.enter_async_context(
                mqtt_client(scene.envs[serial], client_id=serial, username=serial, password="token:" + token))
        yield clients


@contextlib.asynccontextmanager
async def _registration_clients(scene: Scene) -> AsyncIterator[dict[str, aiomqtt.Client]]:
    async with contextlib.AsyncExitStack() as stack:
        clients = {}
        for serial in NEWCOMERS:
            env = scene.envs[serial]
            client = await stack.enter_async_context(
                mqtt_client(env, client_id=serial, username=serial, password="init:" + env.init_key))
            await client.subscribe(wire.topic(serial, wire.REGISTER_RESPONSE), qos=1)
            clients[serial] = client
        yield clients


async def _answer(client: aiomqtt.Client) -> wire.RegisterResponse:
    async for message in client.messages:
        return wire.RegisterResponse.parse(bytes(message.payload))
    raise AssertionError("no registration answer")


def _victim_telemetry(serial: str) -> bytes:
    return wire.encode({"v": 1, "seq": VICTIM_SEQ, "samples": [{"ts": 1_700_000_000.5, "cpu_percent": 12.5,
                                                               "serial_echo": serial}]})


def _stored(platform, serial: str) -> list[dict]:
    with platform.ctx.registry.session() as s:
        device = s.scalar(select(Device).where(Device.serial == serial))
        return [r.values for r in s.scalars(select(TelemetryRecord).where(
            TelemetryRecord.device_id == device.id, TelemetryRecord.seq == VICTIM_SEQ))]


async def _others_in_the_same_window(platform, scene: Scene, clients, registrations, poison) -> dict:
    """Publish the poison, then everyone else's messages at once; return what came of them."""
    for suffix, payload in poison:
        await clients[POISONER].publish(wire.topic(POISONER, suffix), payload, qos=1)
    job = asyncio.create_task(asyncio.to_thread(
        platform.client.create_job, "triggerconfig", {"cmd": "get", "path": "publishIntervalSeconds"},
        serials=JOB_VICTIMS))
    for serial in TELEMETRY_VICTIMS:
        await clients[serial].publish(wire.topic(serial, wire.TELEMETRY), _victim_telemetry(serial), qos=1)
    answers = []
    for serial in NEWCOMERS:
        _key, csr = new_key_and_csr(serial)
        await registrations[serial].publish(wire.topic(serial, wire.REGISTER_REQUEST),
                                            wire.RegisterRequest(csr, wire.AUTH_TOKEN).to_bytes(), qos=1)
    for serial in NEWCOMERS:
        answers.append(await asyncio.wait_for(_answer(registrations[serial]), 30))
    created = await job
    done = await asyncio.to_thread(platform.client.wait_job, created["id"], 60)
    return {"registrations": answers, "job": done}


def _assert_the_others_are_whole(platform, outcome: dict) -> None:
    assert [a.ok for a in outcome["registrations"]] == [True, True], [a.error for a in outcome["registrations"]]
    assert all(a.certificate_pem and a.token for a in outcome["registrations"])
    with platform.ctx.registry.session() as s:
        states = dict(s.execute(select(Device.serial, Device.state).where(Device.serial.in_(NEWCOMERS))).all())
    assert states == dict.fromkeys(NEWCOMERS, "registered")
    job = outcome["job"]
    assert sorted(r["serial"] for r in job["results"]) == JOB_VICTIMS
    assert [r["status"] for r in job["results"]] == [200, 200], job["results"]
    for serial in TELEMETRY_VICTIMS:
        assert _stored(platform, serial) == [{"cpu_percent": 12.5, "serial_echo": serial}]


async def test_poisoned_telemetry_is_refused_and_counted_while_the_rest_is_stored(
        fleetrig_platform, fleetrig_catalog, tmp_path):
    scene = await _scene(fleetrig_platform, fleetrig_catalog, tmp_path)
    stats = fleetrig_platform.platform.gateway.stats
    async with _device_clients(scene) as clients, _registration_clients(scene) as registrations:
        outcome = await _others_in_the_same_window(fleetrig_platform, scene, clients, registrations, POISON)
        await wait_for(lambda: all(_stored(fleetrig_platform, s) for s in TELEMETRY_VICTIMS), timeout=20)
    _assert_the_others_are_whole(fleetrig_platform, outcome)
    # Each poisoned message was refused at the wire and counted against its sender alone.
    assert dict(stats.malformed_by_device) == {POISONER: len(POISON)}
    assert "seq" in stats.last_refusal[POISONER]
    assert stats.failed_items == 0 and stats.batches_retried == 0
    # Nothing of it was stored, and the poisoner's own endpoints still answer.
    with fleetrig_platform.ctx.registry.session() as s:
        device = s.scalar(select(Device).where(Device.serial == POISONER))
        assert not s.scalars(select(TelemetryRecord).where(TelemetryRecord.device_id == device.id,
                                                           TelemetryRecord.seq < 10)).all()
    assert (await asyncio.to_thread(fleetrig_platform.client.telemetry, POISONER))["serial"] == POISONER
    assert isinstance(await asyncio.to_thread(fleetrig_platform.client.events, POISONER), list)
    shown = await asyncio.to_thread(fleetrig_platform.client.stats)
    assert shown["malformed_by_device"] == {POISONER: len(POISON)}
    await scene.fleet.stop()


async def test_an_item_the_registry_refuses_fails_alone(fleetrig_platform, fleetrig_catalog, tmp_path):
    scene = await _scene(fleetrig_platform, fleetrig_catalog, tmp_path)
    stats = fleetrig_platform.platform.gateway.stats
    with fleetrig_platform.ctx.registry.session() as s:
        poisoner_id = s.scalar(select(Device.id).where(Device.serial == POISONER))
        # A fault the wire contract cannot see: every telemetry row of this one device is refused.
        s.execute(text(f"CREATE TRIGGER poison BEFORE INSERT ON telemetry WHEN NEW.device_id = {poisoner_id} "
                       "BEGIN SELECT RAISE(ABORT, 'disk says no'); END"))
    valid = [(wire.TELEMETRY, wire.encode({"v": 1, "seq": 1, "samples": [{"ts": 1_700_000_000, "cpu_percent": 3}]}))]
    async with _device_clients(scene) as clients, _registration_clients(scene) as registrations:
        outcome = await _others_in_the_same_window(fleetrig_platform, scene, clients, registrations, valid)
        await wait_for(lambda: all(_stored(fleetrig_platform, s) for s in TELEMETRY_VICTIMS), timeout=20)
    _assert_the_others_are_whole(fleetrig_platform, outcome)
    # The batch that held the failing item was applied again item by item; only that item was lost.
    assert stats.batches_retried >= 1
    assert dict(stats.failed_by_device) == {POISONER: 1} and stats.failed_items == 1
    assert "disk says no" in stats.errors[-1]
    assert not stats.malformed_by_device
    shown = await asyncio.to_thread(fleetrig_platform.client.stats)
    assert shown["failed_by_device"] == {POISONER: 1}
    await scene.fleet.stop()


def test_refusals_name_the_field():
    for (_suffix, payload), field in zip(POISON, ["'ts'", "NaN", "'seq'", "nested deeper", "out of range",
                                                  "nested deeper", "'seq'"], strict=True):
        parse = {wire.TELEMETRY: wire.TelemetryMessage.parse, wire.EVENTS: wire.DeviceEvent.parse,
                 wire.STATUS: wire.Status.parse}[_suffix]
        try:
            parse(payload)
        except wire.WireError as exc:
            assert field in str(exc) and len(str(exc)) < 300, str(exc)
        else:
            raise AssertionError(f"accepted {json.dumps(str(payload[:80]))}")


async def test_registration_for_another_credential_kind_is_refused(fleetrig_platform, fleetrig_catalog):
    """A device provisioned for certificates cannot register itself as a token device (or back)."""
    envs = await asyncio.to_thread(provision, fleetrig_platform, fleetrig_catalog, ["RK-001"])
    env = envs["RK-001"]
    async with mqtt_client(env, client_id="RK-001", username="RK-001", password="init:" + env.init_key) as client:
        await client.subscribe(wire.topic("RK-001", wire.REGISTER_RESPONSE), qos=1)
        _key, csr = new_key_and_csr("RK-001")
        await client.publish(wire.topic("RK-001", wire.REGISTER_REQUEST),
                             wire.RegisterRequest(csr, wire.AUTH_TOKEN).to_bytes(), qos=1)
        refused = await asyncio.wait_for(_answer(client), 30)
        assert not refused.ok and refused.error == "the device was provisioned for x509 authentication, not token"
        await client.publish(wire.topic("RK-001", wire.REGISTER_REQUEST),
                             wire.RegisterRequest(csr, wire.AUTH_X509).to_bytes(), qos=1)
        accepted = await asyncio.wait_for(_answer(client), 30)
    assert accepted.ok and accepted.certificate_pem
    with fleetrig_platform.ctx.registry.session() as s:
        assert s.scalar(select(Device.auth_mode).where(Device.serial == "RK-001")) == "x509"

