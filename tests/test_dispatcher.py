"""The device manager on a simulated device, without the network: manifests in, results out.

The end-to-end tests (test_management.py) drive the same code through the broker; these pin the
rules one by one and check that a refusal changes nothing on the device.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from agent import wire
from agent.config import AgentConfig
from agent.dispatcher import Dispatcher
from simulators.hardware import SimulatedHardware

CONFORMANCE = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "inbm"


def needs_conformance() -> Path:
    if not CONFORMANCE.is_dir():
        pytest.skip(f"conformance data not found at {CONFORMANCE} (it lives beside the project, in ../shared)")
    return CONFORMANCE


class Device:
    """A simulated device's dispatcher plus a record of what it asked for."""

    def __init__(self, tmp_path: Path, family: str = "x86", serial: str = "DISP-001") -> None:
        self.hardware = SimulatedHardware(family, serial)
        self.power: list[str] = []
        self.hardware.power_hook = self.power.append
        self.config = AgentConfig(tmp_path / "state")
        self.events: list[tuple[str, str]] = []
        self.decommissioned = False

        async def notify(kind: str, message: str) -> None:
            self.events.append((kind, message))

        async def decommission() -> None:
            self.decommissioned = True

        self.dispatcher = Dispatcher(self.hardware, self.config, tmp_path / "work", ca_pem=None,
                                     signature_cert=None, repo_url=None, notify=notify, decommission=decommission)

    def snapshot(self) -> dict:
        h = self.hardware
        return copy.deepcopy({
            "config": self.config.values, "images": h.containers.images_, "containers": h.containers.containers_,
            "stacks": {k: vars(v) for k, v in h.containers.stacks.items()}, "installed": h.packages.installed_,
            "sources": h.packages.sources_, "firmware": (h.firmware, h.firmware_date, h.staged),
        })

    async def run(self, method: str, params: dict) -> tuple[wire.RpcResult, object]:
        answer = await self.dispatcher.handle(wire.RpcRequest("r1", method, params, "job-1", 60))
        return answer.result, answer.after

    async def manifest(self, xml: str) -> tuple[wire.RpcResult, object]:
        return await self.run("triggerota", {"manifest": xml})


async def test_invalid_manifests_are_refused_with_300_and_change_nothing(tmp_path):
    root = needs_conformance()
    device = Device(tmp_path)
    before = device.snapshot()
    files = sorted((root / "manifests" / "invalid").glob("*.xml"))
    assert files
    for path in files:
        result, after = await device.manifest(path.read_text())
        assert result.status == 300, (path.name, result)
        assert after is None and result.job_id == "job-1"
    assert device.snapshot() == before
    assert device.events == [] and device.power == []


async def test_cases_json_on_a_simulated_device(tmp_path):
    root = needs_conformance()
    cases = json.loads((root / "cases.json").read_text())["cases"]
    device = Device(tmp_path)
    for case in cases:
        xml = (root / "manifests" / case["manifest"]).read_text()
        before = device.snapshot()
        result, after = await device.manifest(xml)
        assert result.status == case["expect_status"], (case["manifest"], result)
        name = case["manifest"]
        if name.endswith("CONFIG_SET_SUCCESS.xml"):
            assert device.config.values["maxCacheSize"] == "149"
        elif name.endswith("CONFIG_APPEND.xml"):
            assert "htpps://dummyURL.com" in device.config.list("trustedRepositories")
        elif name.endswith("CONFIG_REMOVE.xml"):
            assert "htpps://dummyURL.com" not in device.config.list("trustedRepositories")
        elif name.endswith("REBOOT_GOOD.xml"):
            await after()
            assert device.power[-1] == "reboot"
        elif name.endswith("DECOMMISSION.xml"):
            await after()
            assert device.decommissioned and device.power[-1] == "shutdown"
        elif name.endswith("FOTA_BAD_NONMATCHING.xml"):
            assert "product" in result.message and device.hardware.staged is None
            assert device.snapshot() == before
        elif name.endswith("AOTA_FAIL_WITH_BAD_MANIFEST.xml"):
            assert device.snapshot() == before
        elif name.endswith("CONFIG_GET_SUCCESS.xml"):
            assert result.data


async def test_config_commands_and_refusals(tmp_path):
    device = Device(tmp_path)
    result, _ = await device.run("triggerconfig", {"cmd": "get", "path": "minStorageMB;minMemoryMB"})
    assert result.status == 200 and result.data == {"minStorageMB": "100", "minMemoryMB": "200"}
    result, _ = await device.run("triggerconfig", {"cmd": "set", "path": "minStorageMB:10;minMemoryMB:250"})
    assert result.status == 200 and device.config.int("minMemoryMB") == 250
    assert "<minStorageMB>10</minStorageMB>" in device.config.path.read_text()
    before = device.snapshot()
    for params, why in [
        ({"cmd": "set", "path": "minStorageMB:lots"}, "whole number"),
        ({"cmd": "set", "path": "noSuchKey:1"}, "unknown configuration key"),
        ({"cmd": "append", "path": "minStorageMB:5"}, "append works only on"),
        ({"cmd": "remove", "path": "trustedRepositories:https://never.added/"}, "does not contain"),
        ({"cmd": "set", "path": "minPowerPercent:101"}, "between 0 and 100"),
    ]:
        result, _ = await device.run("triggerconfig", params)
        assert result.status == 400 and why in result.message, (params, result)
    assert device.snapshot() == before


async def test_query_options(tmp_path):
    device = Device(tmp_path, family="photon")
    result, _ = await device.run("triggerquery", {"option": "all"})
    assert result.status == 200
    assert set(result.data) == {"hw", "fw", "os", "version", "swbom", "status"}
    assert result.data["hw"]["product"] == "Photon NX"
    assert result.data["fw"]["version"] == device.hardware.firmware
    assert result.data["status"]["battery_percent"] == device.hardware.battery_percent
    for option in ("hw", "fw", "os", "version", "swbom", "status"):
        result, _ = await device.run("triggerquery", {"option": option})
        assert result.status == 200 and list(result.data) == [option]


async def test_docker_pull_remove_and_compose_list_without_packages(tmp_path):
    device = Device(tmp_path)
    result, _ = await device.run("triggeraota", {"app": "docker", "cmd": "pull", "containerTag": "nginx",
                                                 "version": "1.27"})
    assert result.status == 200 and "nginx:1.27" in device.hardware.containers.images_
    result, _ = await device.run("triggeraota", {"app": "docker", "cmd": "pull", "containerTag": "nosuchimage"})
    assert result.status == 404
    result, _ = await device.run("triggeraota", {"app": "docker", "cmd": "remove", "containerTag": "nginx",
                                                 "version": "1.27"})
    assert result.status == 200 and not device.hardware.containers.images_
    result, _ = await device.run("triggeraota", {"app": "compose", "cmd": "list", "containerTag": "x"})
    assert result.status == 200 and result.data == {"stacks": []}
    result, _ = await device.run("triggeraota", {"app": "compose", "cmd": "down", "containerTag": "never-up"})
    assert result.status == 400 and "Unable to stop docker-compose container" in result.message


async def test_untrusted_source_is_refused_before_any_download(tmp_path):
    device = Device(tmp_path)
    before = device.snapshot()
    result, _ = await device.run("triggeraota", {"app": "compose", "cmd": "up", "containerTag": "web",
                                                 "fetch": "https://evil.example.com/web.tar.gz"})
    assert result.status == 400 and "Source verification failed" in result.message
    assert device.snapshot() == before
    assert not (tmp_path / "work" / "ota" / "aota").exists()


async def test_diagnostics_refuse_an_update_with_the_reason(tmp_path):
    device = Device(tmp_path, family="photon")
    device.hardware.battery_percent = 12
    result, _ = await device.run("triggersota", {"cmd": "update", "mode": "full"})
    assert result.status == 301 and "battery at 12%, below 20%" in result.message
    device.hardware.battery_percent = 80
    device.hardware.software.discard("trtl")
    result, _ = await device.run("triggersota", {"cmd": "update", "mode": "full"})
    assert result.status == 301 and "mandatory software missing: trtl" in result.message
    device.hardware.software.add("trtl")
    result, _ = await device.run("triggersota", {"cmd": "update", "mode": "download-only"})
    assert result.status == 200 and result.data["changed"]
    assert device.hardware.packages.cache


async def test_one_update_at_a_time(tmp_path):
    device = Device(tmp_path)
    device.dispatcher.busy_with = "FOTA job-0"
    result, _ = await device.run("triggersota", {"cmd": "update", "mode": "full"})
    assert result.status in (302, 303) and "OTA IN PROGRESS" in result.message
    # Queries and configuration are not updates: they still run.
    result, _ = await device.run("triggerquery", {"option": "version"})
    assert result.status == 200
