"""The broker's authentication and topic ACL, probed by hostile clients over TLS."""

from __future__ import annotations

import asyncio
import datetime as dt

import aiomqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent import wire
from agent.state import StateDir
from tests.conftest import boot, connect_refused, mqtt_client, provision, tls_context, wait_for


async def test_replayed_init_key_is_refused(fleetrig_platform, fleetrig_catalog, tmp_path):
    envs = await asyncio.to_thread(provision, fleetrig_platform, fleetrig_catalog, ["RP-001"])
    env = envs["RP-001"]
    fleet = await boot(envs, tmp_path / "devices")
    await fleet.stop()
    refused = await connect_refused(
        mqtt_client(env, client_id="RP-001", username="RP-001", password="init:" + env.init_key)
    )
    assert "authori" in refused.lower()
    audit = await asyncio.to_thread(fleetrig_platform.client.audit, "RP-001")
    assert [e["action"] for e in audit] == ["device.register"]


async def test_anonymous_and_wrong_credentials_are_refused(fleetrig_platform, fleetrig_catalog, tmp_path):
    envs = await asyncio.to_thread(provision, fleetrig_platform, fleetrig_catalog, ["WC-001", "WC-002"])
    env = envs["WC-001"]
    fleet = await boot({"WC-001": env}, tmp_path / "devices")
    creds = StateDir(tmp_path / "devices" / "WC-001").credentials()
    assert creds is not None

    cases = [
        mqtt_client(env),  # anonymous, random client id
        mqtt_client(env, client_id="WC-001"),  # no username
        mqtt_client(env, client_id="WC-001", username="WC-001", password="init:" + "x" * 32),
        mqtt_client(env, client_id="WC-001", username="WC-001", password="token:wrong-token"),
        mqtt_client(env, client_id="WC-001", username="WC-001", password="secret"),
        mqtt_client(env, client_id="UNKNOWN-1", username="UNKNOWN-1", password="token:" + creds.token),
        # Another device's token under this device's name.
        mqtt_client(env, client_id="WC-002", username="WC-002", password="token:" + creds.token),
        # Client id and username that differ.
        mqtt_client(env, client_id="WC-002", username="WC-001", password="token:" + creds.token),
        # WC-001's certificate presented as WC-002.
        mqtt_client(env, client_id="WC-002", username="WC-002",
                    tls=tls_context(env, creds.cert_path, creds.key_path)),
    ]
    for client in cases:
        assert "authori" in (await connect_refused(client)).lower()

    # A certificate for the right serial, from a CA the broker does not trust: the TLS
    # handshake fails or the registry check refuses it.
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "WC-001")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    forged_cert, forged_key = tmp_path / "forged.crt", tmp_path / "forged.key"
    forged_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    forged_key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    with pytest.raises(aiomqtt.MqttError):
        async with mqtt_client(env, client_id="WC-001", username="WC-001",
                               tls=tls_context(env, forged_cert, forged_key)):
            pass

    # None of these refusals disturbed the live device.
    device = fleet.devices["WC-001"]
    assert device.powered and device.agent.connects == 1 and not device.error
    assert fleetrig_platform.platform.broker.is_connected("WC-001")
    await fleet.stop()


async def test_plain_mqtt_is_not_served_by_default(fleetrig_platform, fleetrig_catalog):
    envs = await asyncio.to_thread(provision, fleetrig_platform, fleetrig_catalog, ["PL-001"])
    env = envs["PL-001"]
    client = aiomqtt.Client(env.broker_host, env.broker_port, identifier="PL-001", username="PL-001",
                            password="init:" + env.init_key, protocol=aiomqtt.ProtocolVersion.V311, timeout=5)
    with pytest.raises(aiomqtt.MqttError):
        async with client:
            pass


async def test_device_cannot_touch_another_devices_topics(fleetrig_platform, fleetrig_catalog, tmp_path):
    envs = await asyncio.to_thread(provision, fleetrig_platform, fleetrig_catalog, ["ACL-001", "ACL-002"])
    fleet = await boot(envs, tmp_path / "devices")
    a = StateDir(tmp_path / "devices" / "ACL-001").credentials()
    assert a is not None
    env = envs["ACL-001"]
    await fleet.power_off("ACL-001")
    before = await asyncio.to_thread(fleetrig_platform.client.device, "ACL-002")

    async with mqtt_client(env, client_id="ACL-001", username="ACL-001",
                           tls=tls_context(env, a.cert_path, a.key_path)) as attacker:
        # Subscriptions to another device's topics are refused (SUBACK 0x80) ...
        for topic_filter in (wire.topic("ACL-002", wire.ACK), wire.topic("ACL-002", wire.RPC_REQUEST + "/+"),
                             wire.TOPIC_ROOT + "/#", "#", wire.topic("ACL-002", wire.REGISTER_RESPONSE)):
            granted = await attacker.subscribe(topic_filter, qos=1)
            assert granted[0].value == 0x80 or granted[0] == 0x80, (topic_filter, granted)
        # ... its own are granted.
        granted = await attacker.subscribe(wire.topic("ACL-001", wire.ACK), qos=1)
        assert granted[0].value == 1 or granted[0] == 1

        # A birth published on another device's status topic is dropped by the broker: the
        # platform never sees it, so ACL-002's record does not change, and no ack comes back.
        forged = wire.Birth(seq=99, firmware_version="evil-9.9", facts={"product": "forged"})
        await attacker.publish(wire.topic("ACL-002", wire.STATUS), forged.to_bytes(), qos=1)
        # A publish to a topic a device may not use even on its own serial is dropped too.
        await attacker.publish(wire.topic("ACL-001", wire.REGISTER_REQUEST), b'{"csr": "x"}', qos=1)
        # Its own birth goes through, and is acknowledged on its own ack topic.
        own = wire.Birth(seq=7, firmware_version="own-1.0", facts={"product": "mine"})
        await attacker.publish(wire.topic("ACL-001", wire.STATUS), own.to_bytes(), qos=1)
        async with asyncio.timeout(10):
            async for message in attacker.messages:
                assert wire.Ack.parse(message.payload).ref == "birth-7"
                break

    after = await asyncio.to_thread(fleetrig_platform.client.device, "ACL-002")
    assert after["firmware_version"] == before["firmware_version"] != "evil-9.9"
    assert after["facts"]["product"] != "forged"
    assert (await asyncio.to_thread(fleetrig_platform.client.device, "ACL-001"))["firmware_version"] == "own-1.0"
    assert fleetrig_platform.platform.gateway.stats.registered == 2
    await fleet.stop()


async def test_registration_session_is_limited_to_the_exchange(fleetrig_platform, fleetrig_catalog):
    envs = await asyncio.to_thread(provision, fleetrig_platform, fleetrig_catalog, ["RS-001"])
    env = envs["RS-001"]
    async with mqtt_client(env, client_id="RS-001", username="RS-001", password="init:" + env.init_key) as c:
        granted = await c.subscribe(wire.topic("RS-001", wire.RPC_REQUEST + "/+"), qos=1)
        assert granted[0].value == 0x80 or granted[0] == 0x80
        granted = await c.subscribe(wire.topic("RS-001", wire.REGISTER_RESPONSE), qos=1)
        assert granted[0].value == 1 or granted[0] == 1
        # A birth over the init-key session is ignored: the device is not registered yet.
        await c.publish(wire.topic("RS-001", wire.STATUS), wire.Birth(1, "x", {}).to_bytes(), qos=1)
        # A malformed registration request is answered with the reason, and the key stays unspent.
        await c.publish(wire.topic("RS-001", wire.REGISTER_REQUEST), b'{"csr": 5, "auth": "x509"}', qos=1)
        async with asyncio.timeout(10):
            async for message in c.messages:
                response = wire.RegisterResponse.parse(message.payload)
                break
        assert not response.ok and "field 'csr' must be str" in response.error
        # A CSR for another serial is refused too.
        from agent.identity import new_key_and_csr

        _, csr = new_key_and_csr("SOMEONE-ELSE")
        await c.publish(wire.topic("RS-001", wire.REGISTER_REQUEST), wire.RegisterRequest(csr).to_bytes(), qos=1)
        async with asyncio.timeout(10):
            async for message in c.messages:
                response = wire.RegisterResponse.parse(message.payload)
                break
        assert not response.ok and "does not match the device serial" in response.error
    shown = await asyncio.to_thread(fleetrig_platform.client.device, "RS-001")
    assert shown["state"] == "provisioned" and shown["init_keys"][0]["used_at"] is None


async def test_disposed_device_is_disconnected_and_refused(fleetrig_platform, fleetrig_catalog, tmp_path):
    envs = await asyncio.to_thread(provision, fleetrig_platform, fleetrig_catalog, ["DS-001", "DS-002"])
    fleet = await boot(envs, tmp_path / "devices")
    broker = fleetrig_platform.platform.broker
    assert broker.is_connected("DS-001")
    await asyncio.to_thread(fleetrig_platform.client.dispose, "DS-001", "stolen", confirm=True)
    await wait_for(lambda: not broker.is_connected("DS-001"))
    device = fleet.devices["DS-001"]
    await wait_for(lambda: not device.powered)
    assert "cannot connect again" in device.error
    assert broker.is_connected("DS-002")
    await fleet.stop()
