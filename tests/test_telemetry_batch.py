"""Telemetry across a broker restart, and one command to hundreds of devices."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from harness.platform.models import Device, TelemetryRecord
from tests.conftest import boot, provision, wait_for


def stored_seqs(platform, serial: str) -> list[int]:
    with platform.ctx.registry.session() as s:
        device = s.scalar(select(Device).where(Device.serial == serial))
        rows = s.execute(select(TelemetryRecord.seq).where(TelemetryRecord.device_id == device.id)).all()
        return sorted({seq for (seq,) in rows})


async def test_telemetry_survives_a_broker_restart(fleetrig_platform, fleetrig_catalog, tmp_path):
    serials = ["TM-001", "TM-002"]
    envs = await asyncio.to_thread(provision, fleetrig_platform, fleetrig_catalog, serials)
    fleet = await boot(envs, tmp_path / "devices", max_backoff=1.0)
    client = fleetrig_platform.client
    # One sample a second, one message a second, a cache of 100 messages.
    job = await asyncio.to_thread(
        client.create_job, "triggerconfig",
        {"cmd": "set", "path": "collectionIntervalSeconds:1;publishIntervalSeconds:1"}, serials=serials)
    done = await asyncio.to_thread(client.wait_job, job["id"], 30)
    assert [r["status"] for r in done["results"]] == [200, 200]
    await wait_for(lambda: all(len(stored_seqs(fleetrig_platform, s)) >= 2 for s in serials), timeout=20)

    # The broker (with the whole platform) goes away for a while; devices keep collecting.
    await asyncio.to_thread(fleetrig_platform.thread.stop)
    await wait_for(lambda: all(not d.agent.connected for d in fleet.devices.values()), timeout=20)
    await asyncio.sleep(4)
    cached = {s: len(fleet.devices[s].agent.manager.telemetry.unacked) for s in serials}
    assert all(n >= 3 for n in cached.values()), cached
    await asyncio.to_thread(fleetrig_platform.restart)

    await wait_for(lambda: all(d.agent.connects >= 2 for d in fleet.devices.values()), timeout=60)
    await asyncio.sleep(2.5)
    for serial in serials:
        telemetry = fleet.devices[serial].agent.manager.telemetry
        await wait_for(lambda t=telemetry: len(t.unacked) <= 1, timeout=20)
        sent = telemetry.seq
        # Every message the device made is stored exactly once: no gap, nothing lost, no duplicate.
        await wait_for(lambda s=serial, n=sent: stored_seqs(fleetrig_platform, s)[-1] >= n - 1, timeout=20)
        seqs = stored_seqs(fleetrig_platform, serial)
        assert seqs == list(range(1, seqs[-1] + 1)), seqs
        assert telemetry.dropped == 0
    shown = await asyncio.to_thread(client.telemetry, serials[0], 1000)
    assert shown["static"]["product"] and shown["dynamic"]
    assert {"cpu_percent", "available_memory_mb", "percent_disk_used", "core_temp_c"} <= set(shown["dynamic"][0])
    await fleet.stop()


async def test_cache_bound_drops_oldest_and_says_so(fleetrig_platform, fleetrig_catalog, tmp_path):
    envs = await asyncio.to_thread(provision, fleetrig_platform, fleetrig_catalog, ["TC-001"])
    fleet = await boot(envs, tmp_path / "devices")
    manager = fleet.devices["TC-001"].agent.manager
    manager.config.set("maxCacheSize:3")
    await fleet.power_off("TC-001")
    for _ in range(5):
        manager.telemetry.collect()
        manager.telemetry.seal()
    assert list(manager.telemetry.unacked) == [3, 4, 5] and manager.telemetry.dropped == 2
    await fleet.stop()


async def test_batch_command_to_500_devices(fleetrig_platform, fleetrig_catalog, tmp_path):
    serials = [f"BATCH-{i:04d}" for i in range(500)]
    envs = await asyncio.to_thread(provision, fleetrig_platform, fleetrig_catalog, serials)
    fleet = await boot(envs, tmp_path / "devices", timeout=180)
    await asyncio.to_thread(fleetrig_platform.client.claim, all=True)
    job = await asyncio.to_thread(fleetrig_platform.client.create_job, "triggersota",
                                  {"cmd": "update", "mode": "download-only"}, all=True)
    assert len(job["results"]) == 500
    done = await asyncio.to_thread(fleetrig_platform.client.wait_job, job["id"], 180)
    assert done["done"], done["counts"]
    assert sorted(r["serial"] for r in done["results"]) == serials
    assert done["counts"]["succeeded"] == 500, [r for r in done["results"] if r["status"] != 200][:3]
    assert all(fleet.devices[s].hardware.packages.cache for s in serials)
    await fleet.stop()


def test_retention_prunes_old_rows(fleetrig_platform, fleetrig_catalog):
    import datetime as dt

    from harness.platform import telemetry
    from harness.platform.models import DeviceEventRecord, utcnow

    provision(fleetrig_platform, fleetrig_catalog, ["RT-001"])
    with fleetrig_platform.ctx.registry.session() as s:
        device = s.scalar(select(Device).where(Device.serial == "RT-001"))
        old, new = utcnow() - dt.timedelta(days=40), utcnow() - dt.timedelta(days=1)
        for i, at in enumerate((old, new)):
            s.add(TelemetryRecord(device_id=device.id, at=at, seq=i + 1, values={"cpu_percent": 1.0}))
            s.add(DeviceEventRecord(device_id=device.id, at=at, kind="test", message="x"))
    assert telemetry.prune(fleetrig_platform.ctx, 30) == 1
    shown = fleetrig_platform.client.telemetry("RT-001")
    assert [d["seq"] for d in shown["dynamic"]] == [2]
    assert len(fleetrig_platform.client.events("RT-001")) == 1
