"""The agent's zipapp on Debian's own python3, outside the project's virtualenv.

`fleetrig agent bundle` packs the agent with aiomqtt, paho-mqtt, defusedxml, xmlschema and
elementpath (never cryptography: Debian's python3-cryptography provides it). The bundle runs
under /usr/bin/python3 -I (isolated: no virtualenv, no user site, no PYTHONPATH) and registers
against a real platform. Skipped, with the reason, where that python3 or its cryptography is
missing (apt-get install python3 python3-cryptography).
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from agent.bundle import BUNDLED
from tests.agent_helpers import ROOT, AgentProcess
from tests.conftest import provision

SYSTEM_PYTHON = Path("/usr/bin/python3")


def _system_python_reason() -> str | None:
    if not SYSTEM_PYTHON.exists():
        return f"{SYSTEM_PYTHON} is absent (apt-get install python3 python3-cryptography)"
    probe = subprocess.run([str(SYSTEM_PYTHON), "-I", "-c", "import cryptography"], capture_output=True, check=False)
    if probe.returncode != 0:
        return f"{SYSTEM_PYTHON} has no cryptography (apt-get install python3-cryptography)"
    return None


needs_system_python = pytest.mark.skipif(_system_python_reason() is not None, reason=_system_python_reason() or "")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "fleetrig-agent.pyz"
    done = subprocess.run([sys.executable, "-c", "from harness.cli.main import main; main()", "agent", "bundle",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert f"run it with: python3 -I {out} --help" in done.stdout
    return out


def test_the_bundle_carries_the_pure_python_dependencies_and_their_metadata(bundle):
    names = zipfile.ZipFile(bundle).namelist()
    tops = {name.split("/", 1)[0] for name in names}
    assert {"__main__.py", "agent", "aiomqtt", "paho", "defusedxml", "xmlschema", "elementpath"} <= tops
    assert not any(top.startswith("cryptography") for top in tops)  # Debian's python3-cryptography
    dist_infos = {top.split("-")[0].lower() for top in tops if top.endswith(".dist-info")}
    assert dist_infos == {name.replace("-", "_") for name in BUNDLED}
    assert "agent/manifest_schema.xsd" in names and "agent/linux/apt.py" in names
    assert not any("__pycache__" in name for name in names)
    assert bundle.read_bytes().startswith(b"#!/usr/bin/python3 -I\n")


def _system_run(bundle: Path, *args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SYSTEM_PYTHON), "-I", str(bundle), *args], cwd="/", capture_output=True, text=True,
                          timeout=120, check=False, env={"PATH": "/usr/bin:/bin", "FLEETRIG_AGENT_CACHE": str(cache)})


@needs_system_python
def test_debian_python_runs_the_bundle_as_is(bundle, tmp_path):
    cache = tmp_path / "cache"
    done = _system_run(bundle, "--help", cache=cache)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: fleetrig-agent")
    (unpacked,) = cache.iterdir()  # unpacked once, named by the bundle's hash
    assert (unpacked / ".complete").exists()
    again = _system_run(bundle, "--env", str(tmp_path / "missing.env"), cache=cache)
    assert again.returncode == 1 and again.stderr.strip() == (
        f"fleetrig-agent: error: agent.env refused: {tmp_path / 'missing.env'}: no such file "
        "(was agent.env placed on the device?)")
    assert list(cache.iterdir()) == [unpacked]


@needs_system_python
async def test_the_bundle_registers_against_a_real_platform(bundle, fleetrig_platform, fleetrig_catalog, tmp_path):
    serial = "PYZ-0001"
    (env,) = (await asyncio.to_thread(provision, fleetrig_platform, fleetrig_catalog, [serial])).values()
    env_file = tmp_path / "agent.env"
    env_file.write_text(env.render())
    agent = AgentProcess([str(SYSTEM_PYTHON), "-I", str(bundle)], env_file, tmp_path / "state", "--until",
                         "registered", "--timeout", "60",
                         environ={"FLEETRIG_AGENT_CACHE": str(tmp_path / "cache")})
    try:
        code = await asyncio.to_thread(agent.start().wait, 90)
    finally:
        agent.stop()
    assert code == 0, agent.output()
    assert f"{serial} registered and live" in agent.output()
    device = await asyncio.to_thread(fleetrig_platform.client.device, serial)
    assert device["state"] == "registered"
    assert device["facts"]["os"].startswith("Debian") or device["facts"]["os"]
    assert (tmp_path / "state" / "device.crt").read_text().startswith("-----BEGIN CERTIFICATE-----")


@needs_system_python
def test_packages_unpack_on_debian_python(bundle, tmp_path):
    """Debian 12's python3 (3.11.2) has no tarfile extraction filters: AOTA/FOTA unpacking still works,
    and still refuses a member that escapes the folder."""

    def tar(name: str) -> Path:
        path = tmp_path / f"{len(list(tmp_path.iterdir()))}.tar.gz"
        with tarfile.open(path, "w:gz") as archive:
            info = tarfile.TarInfo(name)
            info.size = 3
            archive.addfile(info, io.BytesIO(b"abc"))
        return path

    good, evil = tar("stack/docker-compose.yml"), tar("../evil.txt")
    cache = tmp_path / "cache"
    assert _system_run(bundle, "--help", cache=cache).returncode == 0
    (unpacked,) = cache.iterdir()
    script = ("import sys; from pathlib import Path; from agent.packages import safe_extract; "
              "from agent.hardware import HardwareError\n"
              f"print(safe_extract(Path({str(good)!r}), Path({str(tmp_path / 'out')!r})))\n"
              f"try: safe_extract(Path({str(evil)!r}), Path({str(tmp_path / 'evil')!r}))\n"
              "except HardwareError as exc: print(exc.status, exc)\n")
    done = subprocess.run([str(SYSTEM_PYTHON), "-I", "-c", f"import sys; sys.path.insert(0, {str(unpacked)!r})\n"
                           + script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["['stack/docker-compose.yml']",
                                        "400 package 1.tar.gz: member '../evil.txt' escapes the folder"]
    assert (tmp_path / "out" / "stack" / "docker-compose.yml").read_bytes() == b"abc"
    assert not (tmp_path / "evil.txt").exists()
