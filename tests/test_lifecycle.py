"""The whole lifecycle over the real broker (TLS) and a real SQLite file."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from agent.state import StateDir
from harness.platform.models import AuditEvent, Credential, CveRecord, Device, DisposalEvent, FirmwareRecord, InitKey
from tests.conftest import boot, connect_refused, mqtt_client, provision, tls_context, wait_for


async def test_provision_boot_claim_dispose(fleetrig_platform, fleetrig_catalog, tmp_path):
    platform, client = fleetrig_platform, fleetrig_platform.client
    serials = ["IMX-0001", "PNX-0002", "X86-0003"]
    envs = await asyncio.to_thread(provision, platform, fleetrig_catalog, serials)
    assert {d["state"] for d in await asyncio.to_thread(client.devices)} == {"provisioned"}

    fleet = await boot(envs, tmp_path / "devices")
    for serial in serials:
        shown = await asyncio.to_thread(client.device, serial)
        assert shown["state"] == "registered"
        assert shown["connectivity"] == "online"
        assert shown["last_seen"] is not None
        assert shown["firmware_version"] == fleet.devices[serial].hardware.firmware
        assert shown["facts"]["product"] == fleet.devices[serial].hardware.facts()["product"]
        assert shown["init_keys"][0]["used_at"] is not None
        assert len(shown["credentials"]) == 1
        creds = StateDir(tmp_path / "devices" / serial).credentials()
        assert creds is not None and creds.cert_path.stat().st_mode & 0o777 == 0o644
        assert creds.key_path.stat().st_mode & 0o777 == 0o600

    claim = await asyncio.to_thread(client.claim, all=True)
    assert claim["claimed"] == 3 and claim["refused"] == 0
    fleet_rows = await asyncio.to_thread(client.fleet)
    assert sorted(d["serial"] for d in fleet_rows) == serials
    assert all(d["state"] == "claimed" and d["connectivity"] == "online" for d in fleet_rows)
    again = await asyncio.to_thread(client.claim, all=True)
    assert again["claimed"] == 0

    victim = serials[0]
    await asyncio.to_thread(client.track_cve, victim, "CVE-2024-3094", "open")
    result = await asyncio.to_thread(client.dispose, victim, "water damage", confirm=True)
    assert result["cve_records_removed"] == 1 and result["firmware_records_removed"] == 1

    device = fleet.devices[victim]
    await wait_for(lambda: not device.powered, timeout=20)
    assert "refused this device's credentials" in device.error
    # The stored certificate no longer opens a session.
    creds = StateDir(tmp_path / "devices" / victim).credentials()
    assert creds is not None
    env = envs[victim]
    refused = await connect_refused(
        mqtt_client(env, client_id=victim, username=victim, tls=tls_context(env, creds.cert_path, creds.key_path))
    )
    assert "authori" in refused.lower()
    # The token no longer works either.
    refused = await connect_refused(
        mqtt_client(env, client_id=victim, username=victim, password="token:" + creds.token)
    )
    assert "authori" in refused.lower()

    with platform.ctx.registry.session() as s:
        assert s.scalar(select(Device).where(Device.serial == victim)) is None
        event = s.scalar(select(DisposalEvent).where(DisposalEvent.serial == victim))
        assert event.reason == "water damage" and event.actor == "operator:pytest"
        assert s.scalar(select(func.count()).select_from(InitKey)) == 2
        assert s.scalar(select(func.count()).select_from(Credential)) == 2
        assert s.scalar(select(func.count()).select_from(FirmwareRecord)) == 2
        assert s.scalar(select(func.count()).select_from(CveRecord)) == 0
        actions = [a for (a,) in s.execute(select(AuditEvent.action).where(AuditEvent.serial == victim))]
        assert actions == ["device.register", "device.cve", "device.dispose"]
    # The others are untouched and still online.
    others = await asyncio.to_thread(client.fleet)
    assert [d["serial"] for d in others] == serials[1:]
    assert all(fleet.devices[s].powered and not fleet.devices[s].error for s in serials[1:])
    # Disposal is permanent: the serial cannot be provisioned again.
    report = await asyncio.to_thread(
        client.provision, [victim], customer=fleetrig_catalog.customer, part=fleetrig_catalog.part
    )
    assert report["refused"] == 1 and "disposed" in report["results"][0]["error"]
    await fleet.stop()


async def test_token_auth_device_lifecycle(fleetrig_platform, fleetrig_catalog, tmp_path):
    envs = await asyncio.to_thread(provision, fleetrig_platform, fleetrig_catalog, ["TOK-0001"], auth="token")
    fleet = await boot(envs, tmp_path / "devices")
    creds = StateDir(tmp_path / "devices" / "TOK-0001").credentials()
    assert creds is not None and creds.auth == "token" and len(creds.token) >= 40
    shown = await asyncio.to_thread(fleetrig_platform.client.device, "TOK-0001")
    assert shown["auth"] == "token" and shown["connectivity"] == "online"
    await fleet.stop()
    await wait_for(lambda: fleetrig_platform.client.device("TOK-0001")["connectivity"] == "offline")


async def test_reboot_with_stored_credentials_and_spent_key(fleetrig_platform, fleetrig_catalog, tmp_path):
    envs = await asyncio.to_thread(provision, fleetrig_platform, fleetrig_catalog, ["RB-0001"])
    fleet = await boot(envs, tmp_path / "devices")
    device = fleet.devices["RB-0001"]
    await fleet.power_off("RB-0001")
    await wait_for(lambda: fleetrig_platform.client.device("RB-0001")["connectivity"] == "offline")

    fleet.power_on("RB-0001")
    assert not await fleet.wait_live(20)
    assert device.agent.connects == 2
    shown = await asyncio.to_thread(fleetrig_platform.client.device, "RB-0001")
    assert shown["connectivity"] == "online" and len(shown["credentials"]) == 1

    # Wipe the credentials: the spent init key alone cannot bring the device back.
    await fleet.power_off("RB-0001")
    StateDir(tmp_path / "devices" / "RB-0001").wipe_credentials()
    fleet.power_on("RB-0001")
    await wait_for(lambda: not device.powered, timeout=20)
    assert "refused the init key" in device.error and "reissue RB-0001" in device.error
    await fleet.stop()


async def test_power_cut_during_first_boot_does_not_strand_the_device(fleetrig_platform, fleetrig_catalog, tmp_path):
    """The platform answered, the device lost power before storing the answer: it registers again."""
    from agent import wire
    from agent.identity import new_key_and_csr
    from tests.conftest import connect_refused, mqtt_client, tls_context

    envs = await asyncio.to_thread(provision, fleetrig_platform, fleetrig_catalog, ["PC-001"])
    env = envs["PC-001"]
    lost_key, csr = new_key_and_csr("PC-001")
    async with mqtt_client(env, client_id="PC-001", username="PC-001", password="init:" + env.init_key) as c:
        await c.subscribe(wire.topic("PC-001", wire.REGISTER_RESPONSE), qos=1)
        await c.publish(wire.topic("PC-001", wire.REGISTER_REQUEST), wire.RegisterRequest(csr).to_bytes(), qos=1)
        async with asyncio.timeout(10):
            async for message in c.messages:
                first = wire.RegisterResponse.parse(message.payload)
                break
    assert first.ok  # ... and then the power went out: nothing was stored on the device.

    fleet = await boot(envs, tmp_path / "devices")
    shown = await asyncio.to_thread(fleetrig_platform.client.device, "PC-001")
    assert shown["state"] == "registered" and shown["connectivity"] == "online"
    assert [c["revoked_at"] is not None for c in shown["credentials"]] == [True, False]
    # The credential of the interrupted exchange is dead, and so is the init key now.
    (tmp_path / "lost.crt").write_text(first.certificate_pem)
    (tmp_path / "lost.key").write_text(lost_key)
    refused = await connect_refused(mqtt_client(env, client_id="PC-001", username="PC-001",
                                                tls=tls_context(env, tmp_path / "lost.crt", tmp_path / "lost.key")))
    assert "authori" in refused.lower()
    refused = await connect_refused(mqtt_client(env, client_id="PC-001", username="PC-001",
                                                password="init:" + env.init_key))
    assert "authori" in refused.lower()
    await fleet.stop()
