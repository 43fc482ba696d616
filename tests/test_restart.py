"""Faults: a platform restart loses no row, and devices come back by themselves; a kill leaves a
data dir the next start takes over; one data dir serves one platform at a time."""

from __future__ import annotations

import asyncio
import signal

import pytest

from harness.client import Client
from harness.datadir import read_state
from harness.errors import Refused
from harness.platform.lock import LOCK_FILE
from harness.platform.process import PlatformConfig, PlatformThread
from tests.conftest import boot, provision, table_dump, wait_for
from tests.serve_process import FREE_PORTS, serve_refused, start_serve, stop_serve


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


def test_a_second_platform_on_a_data_dir_in_use_is_refused_naming_the_holder(tmp_path):
    data_dir = tmp_path / "data"
    first = start_serve(data_dir, *FREE_PORTS)
    try:
        done = serve_refused("--data-dir", str(data_dir), *FREE_PORTS)
        assert done.returncode == 1
        assert done.stderr == (f"fleetrig: error: data dir {data_dir} is in use by another fleetrig platform "
                               f"(pid {first.pid}); stop that one first, or give another --data-dir\n")
        # In the same process too (flock is per open file, not per process).
        second = PlatformThread(PlatformConfig(data_dir=data_dir))
        with pytest.raises(Refused, match=rf"in use by another fleetrig platform \(pid {first.pid}\)"):
            second.start()
        second.stop()
        assert first.poll() is None  # the running one is untouched
    finally:
        stop_serve(first)
    assert first.returncode == 0
    again = start_serve(data_dir, *FREE_PORTS)  # free again once the holder stopped
    stop_serve(again)


def test_after_a_kill_the_next_start_takes_the_data_dir_and_the_same_ports(tmp_path):
    data_dir = tmp_path / "data"
    killed = start_serve(data_dir, *FREE_PORTS)
    state = read_state(data_dir)
    assert state["pid"] == killed.pid
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    assert (data_dir / LOCK_FILE).read_text().strip() == str(killed.pid)  # left behind: no matter
    again = start_serve(data_dir, *FREE_PORTS)
    try:
        after = read_state(data_dir)
        assert after["pid"] == again.pid
        assert {k: after[k] for k in ("http_port", "mqtts_port", "repo_port", "api_url", "broker_url")} == {
            k: state[k] for k in ("http_port", "mqtts_port", "repo_port", "api_url", "broker_url")}
        with Client.from_data_dir(data_dir) as client:
            assert client.stats()["identities"] == 0
    finally:
        stop_serve(again)
