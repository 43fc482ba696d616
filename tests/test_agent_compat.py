"""The compat modules refuse a library release they were not written for, and name the right one."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib

import pytest

from agent import aiomqtt_compat, paho_compat
from agent.compat_guard import UnsupportedVersion, installed_version, require
from tests.agent_helpers import ROOT


def test_the_pins_in_pyproject_are_the_versions_the_compat_modules_support():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"aiomqtt=={aiomqtt_compat.SUPPORTED}" in dependencies
    assert f"paho-mqtt=={paho_compat.SUPPORTED}" in dependencies
    assert importlib.metadata.version("aiomqtt") == aiomqtt_compat.SUPPORTED


def test_another_release_is_refused_with_the_supported_one_named():
    with pytest.raises(UnsupportedVersion, match=r"internals of aiomqtt 9\.9\.9 and refuses aiomqtt 2\.5\.1: "
                                                  r"run pip install 'aiomqtt==9\.9\.9'"):
        require("aiomqtt", "9.9.9", None)


def test_without_metadata_the_module_version_decides():
    assert installed_version("no-such-distribution", "1.2.3") == "1.2.3"
    require("no-such-distribution", "1.2.3", "1.2.3")
    with pytest.raises(UnsupportedVersion, match=r"refuses no-such-distribution \(version unknown\)"):
        require("no-such-distribution", "1.2.3", None)


def test_the_agent_refuses_to_start_on_an_unsupported_aiomqtt(tmp_path):
    # A stand-in aiomqtt 0.0.1 ahead of the real one on the path: the guard fires at import.
    fake = tmp_path / "aiomqtt"
    fake.mkdir()
    (fake / "__init__.py").write_text("__version__ = '0.0.1'\nclass Client: pass\n")
    (tmp_path / "aiomqtt-0.0.1.dist-info").mkdir()
    (tmp_path / "aiomqtt-0.0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: aiomqtt\n"
                                                                    "Version: 0.0.1\n")
    done = subprocess.run([sys.executable, "-m", "agent", "--env", str(tmp_path / "x.env")], cwd=ROOT,
                          env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done
    assert done.stderr.strip().splitlines() == [
        "fleetrig-agent: error: the fleetrig agent overrides internals of aiomqtt 2.5.1 and refuses aiomqtt 0.0.1: "
        "run pip install 'aiomqtt==2.5.1'"
    ]
