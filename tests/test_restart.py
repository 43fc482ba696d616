"""Faults: a platform restart loses no row, and devices come back by themselves."""

from __future__ import annotations

import asyncio

from tests.conftest import boot, provision, table_dump, wait_for


async def test_platform_restart_keeps_rows_and_devices_reconnect(fleetrig_platform, fleetrig_catalog, tmp_path):
    serials = [f"RS-{i:03d}" for i in range(12)]
    envs = await asyncio.to_thread(provision, fleetrig_platform, fleetrig_catalog, serials)
    fleet = await boot(envs, tmp_path / "devices", max_backoff=1.0)
    await asyncio.to_thread(fleetrig_platform.client.claim, serials[:6])
    api_url, broker_url = fleetrig_platform.platform.api_url, fleetrig_platform.platform.broker_url
    before = table_dump(fleetrig_platform)

    await asyncio.to_thread(fleetrig_platform.thread.stop)
    # While the platform is down every device notices and retries.
    await wait_for(lambda: all(not d.agent.connected for d in fleet.devices.values()), timeout=30)
    await asyncio.to_thread(fleetrig_platform.restart)
    assert fleetrig_platform.platform.api_url == api_url
    assert fleetrig_platform.platform.broker_url == broker_url

    after = table_dump(fleetrig_platform)
    for name in ("customers", "parts", "models", "init_keys", "credentials", "claims", "firmware_records"):
        assert after[name] == before[name], name
    assert len(after["devices"]) == len(before["devices"]) == 12
    assert len(after["audit_events"]) >= len(before["audit_events"])

    # Every device reconnects with its stored credentials and is announced again.
    await wait_for(lambda: all(d.agent.connects >= 2 and d.agent.connected for d in fleet.devices.values()),
                   timeout=60)
    await wait_for(lambda: all(d["connectivity"] == "online" for d in fleetrig_platform.client.devices()),
                   timeout=30)
    states = {d["serial"]: d["state"] for d in await asyncio.to_thread(fleetrig_platform.client.devices)}
    assert [states[s] for s in serials] == ["claimed"] * 6 + ["registered"] * 6
    assert all(not d.error for d in fleet.devices.values())
    await fleet.stop()
