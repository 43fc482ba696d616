"""Ports: 0 means a free port at the first start and the same one after; an explicit port overrides;
a busy port is one line naming the server and the port."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.datadir import STATE_FILE, read_state
from harness.errors import Refused
from harness.platform.process import PlatformConfig, PlatformThread
from tests.conftest import boot, provision
from tests.serve_process import FREE_PORTS, serve_refused


def config(data_dir: Path, **ports: int) -> PlatformConfig:
    return PlatformConfig(data_dir=data_dir, **{"http_port": 0, "mqtts_port": 0, "repo_port": 0, **ports})


def start(cfg: PlatformConfig) -> PlatformThread:
    thread = PlatformThread(cfg)
    try:
        thread.start()
    except BaseException:
        thread.stop()
        raise
    return thread


@pytest.fixture
def occupied() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def urls(thread: PlatformThread) -> tuple[str, str, str]:
    p = thread.platform
    return p.api_url, p.broker_url, p.repo_url


async def test_ports_chosen_with_0_are_kept_and_a_provisioned_device_reconnects(fleetrig_platform, fleetrig_catalog,
                                                                              tmp_path):
    envs = await asyncio.to_thread(provision, fleetrig_platform, fleetrig_catalog, ["PORT-001", "PORT-002"])
    fleet = await boot(envs, tmp_path / "devices", max_backoff=1.0)
    before = urls(fleetrig_platform.thread)
    await asyncio.to_thread(fleetrig_platform.thread.stop)
    # The same "0 0 0" as the first start: the ports written into every agent.env come back.
    fleetrig_platform.thread = await asyncio.to_thread(start, config(fleetrig_platform.data_dir))
    assert urls(fleetrig_platform.thread) == before
    state = read_state(fleetrig_platform.data_dir)
    assert before[0].endswith(f":{state['http_port']}") and before[1].endswith(f":{state['mqtts_port']}")
    for _ in range(600):
        if all(d.agent.connects >= 2 and d.agent.connected for d in fleet.devices.values()):
            break
        await asyncio.sleep(0.05)
    assert all(d.agent.connects >= 2 and d.agent.connected and not d.error for d in fleet.devices.values())
    await fleet.stop()


def test_an_explicit_port_overrides_the_kept_one_and_is_kept_from_then_on(tmp_path):
    data_dir = tmp_path / "data"
    start(config(data_dir)).stop()
    first = read_state(data_dir)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        wanted = probe.getsockname()[1]
    thread = start(config(data_dir, http_port=wanted))
    assert thread.platform.api_url.endswith(f":{wanted}")
    assert thread.platform.broker_url == first["broker_url"]  # the others stay where they were
    thread.stop()
    thread = start(config(data_dir))
    assert thread.platform.api_url.endswith(f":{wanted}")
    thread.stop()


@pytest.mark.parametrize(("option", "server"), [("http_port", "REST API"), ("mqtts_port", "MQTT broker"),
                                                ("repo_port", "package repository"),
                                                ("mqtt_port", "plain MQTT listener")])
def test_a_busy_port_is_one_line_naming_the_server_and_port(tmp_path, occupied, option, server):
    data_dir = tmp_path / "data"
    with pytest.raises(Refused) as info:
        start(config(data_dir, **{option: occupied}))
    assert str(info.value) == f"the {server} cannot listen on 127.0.0.1:{occupied}: Address already in use"
    # Nothing was left behind: the data dir is free and a start on free ports works.
    start(config(data_dir)).stop()


def test_a_kept_port_that_is_busy_names_where_it_was_kept(tmp_path):
    data_dir = tmp_path / "data"
    start(config(data_dir)).stop()
    kept = read_state(data_dir)["mqtts_port"]
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", kept))
        squatter.listen()
        with pytest.raises(Refused) as info:
            start(config(data_dir))
    message = str(info.value)
    assert message.startswith(f"the MQTT broker cannot listen on 127.0.0.1:{kept}: Address already in use")
    assert str(data_dir / STATE_FILE) in message and "--mqtts-port N" in message
    assert read_state(data_dir)["mqtts_port"] == kept  # a refused start keeps the old state


def test_serve_on_a_busy_port_exits_1_with_one_line(tmp_path, occupied):
    done = serve_refused("--data-dir", str(tmp_path / "data"), *FREE_PORTS, "--repo-port", str(occupied))
    assert done.returncode == 1
    assert done.stderr == (f"fleetrig: error: the package repository cannot listen on 127.0.0.1:{occupied}: "
                           "Address already in use\n")
    assert not (tmp_path / "data" / STATE_FILE).exists() or "repo_port" not in json.loads(
        (tmp_path / "data" / STATE_FILE).read_text())
