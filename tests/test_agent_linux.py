"""The agent on this Linux machine as a device: `python -m agent` with LinuxHardware, over TLS.

The process registers against a real platform, answers a query with this machine's own facts,
changes its configuration, runs a SOTA download-only through apt-get's simulation (the host's
packages and apt cache stay as they were), answers AOTA with the state of the machine's container
runtime, and reboots through a power command the test owns (it writes a file, nothing else goes
down). Booted again, it comes back with its stored credentials; decommissioned, it wipes its state.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.linux.sysinfo import SysInfo
from tests.agent_helpers import ROOT, AgentProcess, certificate, python_m_agent
from tests.conftest import provision, wait_for

#: What the device's mandatory-software list loses so that updates run on a host without INBM's tools.
MANDATORY_OFF = "sotaSW:docker;sotaSW:trtl;sotaSW:inbm-telemetry"


def _dpkg_state() -> tuple[str, list[str]]:
    status = Path("/var/lib/dpkg/status").read_text(errors="replace")
    archives = sorted(p.name for p in Path("/var/cache/apt/archives").glob("*.deb"))
    return status, archives


@dataclass
class LinuxDevice:
    client: Any
    serial: str
    agent: AgentProcess
    state: Path
    power_log: Path

    def job(self, method: str, params: dict | None = None) -> dict:
        job = self.client.create_job(method, params or {}, serials=[self.serial])
        done = self.client.wait_job(job["id"], 120)
        assert done["done"], done
        (result,) = done["results"]
        return result

    def online(self) -> bool:
        return self.client.device(self.serial)["connectivity"] == "online"


@pytest.fixture
async def device(fleetrig_platform, fleetrig_catalog, tmp_path, request) -> AsyncIterator[LinuxDevice]:
    serial = f"LNX-{request.node.name[-20:].replace('_', '-').strip('-')}"
    (env,) = (await asyncio.to_thread(provision, fleetrig_platform, fleetrig_catalog, [serial])).values()
    env_file = tmp_path / "agent.env"
    env_file.write_text(env.render())
    state, power_log = tmp_path / "state", tmp_path / "power.log"
    agent = AgentProcess(python_m_agent(), env_file, state, "--sota-dry-run",
                         "--reboot-command", f"sh -c 'echo reboot >> {power_log}'",
                         "--shutdown-command", f"sh -c 'echo shutdown >> {power_log}'")
    linux = LinuxDevice(fleetrig_platform.client, serial, agent, state, power_log)
    try:
        agent.start()
        await wait_for(linux.online, timeout=60)
        yield linux
    finally:
        agent.stop()


async def test_query_config_aota_reboot_and_decommission(device):
    registered = await asyncio.to_thread(device.client.device, device.serial)
    assert registered["state"] == "registered"
    info = SysInfo("/")
    assert registered["facts"]["os"] == info.os_name()
    assert registered["facts"]["total_memory"] == info.memory_kib()["MemTotal"] * 1024

    hw = await asyncio.to_thread(device.job, "triggerquery", {"option": "all"})
    assert hw["status"] == 200, hw
    assert hw["data"]["os"]["kernel"] == Path("/proc/sys/kernel/osrelease").read_text().strip()
    assert hw["data"]["status"]["total_memory_mb"] == info.memory_kib()["MemTotal"] // 1024
    if shutil.which("dpkg-query"):
        assert "python3" in hw["data"]["swbom"]["packages"]

    result = await asyncio.to_thread(device.job, "triggerconfig", {"cmd": "set", "path": "maxCacheSize:149"})
    assert result["status"] == 200, result
    result = await asyncio.to_thread(device.job, "triggerconfig", {"cmd": "get", "path": "maxCacheSize"})
    assert result["data"] == {"maxCacheSize": "149"}
    assert "<maxCacheSize>149</maxCacheSize>" in (device.state / "intel_manageability.conf").read_text()

    # Updates check the mandatory software first (docker, trtl, inbm-telemetry by default).
    refused = await asyncio.to_thread(device.job, "triggeraota", {"app": "docker", "cmd": "list", "containerTag": "x"})
    assert refused["status"] == 301 and "mandatory software missing" in refused["message"], refused
    result = await asyncio.to_thread(device.job, "triggerconfig", {"cmd": "remove", "path": MANDATORY_OFF})
    assert result["status"] == 200, result
    # AOTA: this machine's container runtime says what it lacks, in the result, not a traceback.
    aota = await asyncio.to_thread(device.job, "triggeraota", {"app": "docker", "cmd": "list", "containerTag": "x"})
    if shutil.which("docker") is None:
        assert aota["status"] == 400 and "no container runtime on this device" in aota["message"], aota
    elif aota["status"] != 200:
        assert aota["status"] == 400 and "docker exited with" in aota["message"], aota

    # Reboot: the result first, then the test's power command; the process ends.
    result = await asyncio.to_thread(device.job, "reboot_device")
    assert result["status"] == 200, result
    assert device.agent.wait(30) == 0, device.agent.output()
    assert device.power_log.read_text().split() == ["reboot"]
    assert "stopped (reboot)" in device.agent.output()

    # Power on again: the stored credentials, not the spent init key.
    device.agent.start()
    await wait_for(device.online, timeout=60)
    assert (device.state / "boot_count").read_text() == "2"
    events = await asyncio.to_thread(device.client.events, device.serial)
    assert any(e["kind"] == "power" for e in events)

    result = await asyncio.to_thread(device.job, "decommission_device")
    assert result["status"] == 200, result
    assert device.agent.wait(30) == 0, device.agent.output()
    assert device.power_log.read_text().split() == ["reboot", "shutdown"]
    assert list(device.state.iterdir()) == []  # credentials, configuration, boot count: all gone


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="apt-get is not installed: SOTA needs a Debian-family host")
async def test_sota_download_only_through_apt_changes_nothing_on_the_host(device):
    result = await asyncio.to_thread(device.job, "triggerconfig", {"cmd": "remove", "path": MANDATORY_OFF})
    assert result["status"] == 200, result
    before = _dpkg_state()
    done = await asyncio.to_thread(device.job, "triggersota", {"cmd": "update", "mode": "download-only"})
    assert done["status"] == 200, done
    assert done["message"].startswith("SOTA download-only:")
    assert all(line.endswith("(downloaded)") for line in done["data"]["changed"])
    assert _dpkg_state() == before  # simulated: nothing installed, nothing downloaded
    unknown = await asyncio.to_thread(device.job, "triggersota",
                                      {"cmd": "update", "mode": "full", "package_list": "no-such-package-xyz"})
    assert unknown["status"] == 400 and "Unable to locate package no-such-package-xyz" in unknown["message"], unknown
    assert _dpkg_state() == before


def _foreign_ca_env(env, path: Path) -> None:
    text = env.render()
    foreign = base64.b64encode(certificate("someone else's CA", ca=True).encode()).decode()
    path.write_text(text.replace(base64.b64encode(env.ca_cert_pem.encode()).decode(), foreign))


async def test_a_foreign_ca_ends_until_registered_with_the_tls_reason(fleetrig_platform, fleetrig_catalog, tmp_path):
    (env,) = (await asyncio.to_thread(provision, fleetrig_platform, fleetrig_catalog, ["LNX-0002"])).values()
    env_file = tmp_path / "agent.env"
    _foreign_ca_env(env, env_file)
    commands = {
        "agent": python_m_agent(),
        "sim": [sys.executable, "-c", "from harness.cli.main import main; main()", "sim", "device", "--family", "x86"],
    }
    for name, command in commands.items():
        env_flag, state_flag = ("--env", "--state") if name == "agent" else ("--agent-env", "--state-dir")
        done = await asyncio.to_thread(
            subprocess.run, [*command, env_flag, str(env_file), state_flag, str(tmp_path / name), "--until",
                             "registered", "--timeout", "60"], cwd=ROOT, capture_output=True, text=True, timeout=90)
        assert done.returncode == 1, (name, done)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in done.stderr, (name, done.stderr)
        assert "TLS verification failed" in lines[0] and "CA_CERT in agent.env does not sign" in lines[0], lines
    device = await asyncio.to_thread(fleetrig_platform.client.device, "LNX-0002")
    assert device["state"] == "provisioned"  # it never got as far as registering
