"""Decommissioning a device that is offline: its platform identity is revoked at once, and stays so."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from agent.state import StateDir
from tests.conftest import boot, connect_refused, mqtt_client, provision, tls_context, wait_for

BOUND_S = 60  # no step of these tests waits longer: a device that does not stop fails the test


async def bounded(step: Coroutine[Any, Any, None]) -> None:
    await asyncio.wait_for(step, BOUND_S)


async def test_decommissioning_offline_devices_revokes_their_credentials_at_once(fleetrig_platform, fleetrig_catalog,
                                                                                tmp_path):
    client = fleetrig_platform.client
    envs = await asyncio.to_thread(provision, fleetrig_platform, fleetrig_catalog, ["DC-X509"])
    envs |= await asyncio.to_thread(provision, fleetrig_platform, fleetrig_catalog, ["DC-TOKEN", "DC-KEEP"],
                                    auth="token")
    fleet = await boot(envs, tmp_path / "devices")
    cert = StateDir(tmp_path / "devices" / "DC-X509").credentials()
    token = StateDir(tmp_path / "devices" / "DC-TOKEN").credentials()
    assert cert is not None and token is not None
    for serial in ("DC-X509", "DC-TOKEN"):
        await bounded(fleet.power_off(serial))
    await wait_for(lambda: not any(fleetrig_platform.platform.broker.is_connected(s) for s in ("DC-X509", "DC-TOKEN")))

    def with_certificate():
        env = envs["DC-X509"]
        return mqtt_client(env, client_id="DC-X509", username="DC-X509", tls=tls_context(env, cert.cert_path,
                                                                                       cert.key_path))

    def with_token():
        return mqtt_client(envs["DC-TOKEN"], client_id="DC-TOKEN", username="DC-TOKEN",
                           password="token:" + token.token)

    for attempt in (with_certificate, with_token):  # the credentials work while the devices are off
        async with attempt():
            pass

    job = await asyncio.to_thread(client.create_job, "decommission_device", {}, serials=["DC-X509", "DC-TOKEN"])
    job = await asyncio.to_thread(client.wait_job, job["id"], 60)
    assert job["done"] and job["counts"]["failed"] == 2
    for result in job["results"]:
        assert result["status"] == 503
        assert result["message"] == ("device is offline: command not sent; its credentials are revoked, so it "
                                     "cannot connect again (the device itself was not wiped)")
    for serial in ("DC-X509", "DC-TOKEN"):
        shown = await asyncio.to_thread(client.device, serial)
        assert shown["state"] == "decommissioned"
        assert shown["credentials"] and all(c["revoked_at"] for c in shown["credentials"])
        assert all(k["revoked_at"] for k in shown["init_keys"])
        assert fleetrig_platform.ctx.identities.get(serial) is None
    audit = await asyncio.to_thread(client.audit, "DC-X509")
    assert [(e["actor"], e["detail"]) for e in audit if e["action"] == "device.decommission"] == [
        ("operator:pytest", {"wiped": False})]

    # Refused by the broker now, and after a restart of the platform (the registry says so too).
    for attempt in (with_certificate, with_token):
        assert "authori" in (await connect_refused(attempt())).lower()
    await asyncio.to_thread(fleetrig_platform.restart)
    for attempt in (with_certificate, with_token):
        assert "authori" in (await connect_refused(attempt())).lower()
    # Powered on again, the device cannot come back.
    device = fleet.power_on("DC-TOKEN")
    await wait_for(lambda: device.error, timeout=60)
    assert not device.live
    # The device that was not decommissioned reconnects as ever.
    await wait_for(lambda: fleet.devices["DC-KEEP"].agent.connected and fleet.devices["DC-KEEP"].agent.connects >= 2,
                   timeout=60)
    await bounded(fleet.stop())


async def test_a_decommission_the_device_never_answers_revokes_its_identity_at_the_deadline(
        fleetrig_platform, fleetrig_catalog, tmp_path):
    client = fleetrig_platform.client
    envs = await asyncio.to_thread(provision, fleetrig_platform, fleetrig_catalog, ["DC-MUTE"], auth="token")
    fleet = await boot(envs, tmp_path / "devices")
    token = StateDir(tmp_path / "devices" / "DC-MUTE").credentials().token
    await bounded(fleet.stop())

    def as_device():
        return mqtt_client(envs["DC-MUTE"], client_id="DC-MUTE", username="DC-MUTE", password="token:" + token)

    # Connected with the device's own credentials, but nothing answers the command.
    async with as_device():
        await wait_for(lambda: fleetrig_platform.platform.broker.is_connected("DC-MUTE"))
        job = await asyncio.to_thread(client.create_job, "decommission_device", {}, serials=["DC-MUTE"], timeout_s=1)
        job = await asyncio.to_thread(client.wait_job, job["id"], 60)
        (result,) = job["results"]
        assert result["status"] == 408 and result["message"].startswith("timed out: no answer from the device")
        assert result["message"].endswith("its credentials are revoked, so it cannot connect again "
                                          "(the device itself was not wiped)")
        await wait_for(lambda: not fleetrig_platform.platform.broker.is_connected("DC-MUTE"))
    assert (await asyncio.to_thread(client.device, "DC-MUTE"))["state"] == "decommissioned"
    assert "authori" in (await connect_refused(as_device())).lower()
