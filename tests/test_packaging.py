"""The package's base dependencies are exactly the agent's; `fleetrig` without the platform extra says so."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

from tests.agent_helpers import ROOT
from tests.test_architecture import AGENT_THIRD_PARTY

#: Import name -> distribution name, for the agent's third-party imports.
DISTRIBUTION_OF = {"aiomqtt": "aiomqtt", "paho": "paho-mqtt", "cryptography": "cryptography",
                   "defusedxml": "defusedxml", "xmlschema": "xmlschema"}
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower()


def test_base_dependencies_are_exactly_what_the_agent_imports():
    assert {_name(r) for r in PROJECT["dependencies"]} == {DISTRIBUTION_OF[m] for m in AGENT_THIRD_PARTY}


def test_everything_else_is_an_extra_and_the_pins_are_exact():
    extras = PROJECT["optional-dependencies"]
    assert {"platform", "hil", "load", "web", "dev"} <= set(extras)
    platform = {_name(r) for r in extras["platform"]}
    assert {"amqtt", "fastapi", "uvicorn", "sqlalchemy", "alembic", "httpx", "typer", "rich", "faker"} <= platform
    assert {"pyserial", "pexpect", "ptyprocess", "qemu.qmp", "pyyaml"} == {_name(r) for r in extras["hil"]}
    assert "amqtt==0.12.1" in extras["platform"]
    assert {r for r in PROJECT["dependencies"] if _name(r) in ("aiomqtt", "paho-mqtt")} == {
        "aiomqtt==2.5.1", "paho-mqtt==2.2.0"}
    assert "fleetrig[platform,hil,load,web]" in extras["dev"]  # `pip install -e '.[dev]'` gets it all
    makefile = (ROOT / "Makefile").read_text()
    assert f"-e '.[{','.join(e for e in ('platform', 'hil', 'load', 'web', 'dev'))}]'" in makefile


def test_fleetrig_without_the_platform_extra_names_the_install_command():
    # typer stands for the platform extra's libraries: None in sys.modules makes its import fail.
    code = "import sys; sys.modules['typer'] = None\nfrom harness.cli.launch import main; main()"
    done = subprocess.run([sys.executable, "-c", code, "serve"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "fleetrig: error: the fleetrig command needs the platform extra (typer is not installed): "
        "run pip install 'fleetrig[platform]'; the device agent alone runs as 'python -m agent'"]
    assert PROJECT["scripts"]["fleetrig"] == "harness.cli.launch:main"
