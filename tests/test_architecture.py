"""The agent travels light, and the platform shares only the wire contract with it."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AGENT_ALLOWED = {"aiomqtt", "paho", "cryptography", "defusedxml", "xmlschema", "agent"}
# What the platform may take from the agent package: the wire contract and the agent.env format.
PLATFORM_FROM_AGENT = {"agent.wire", "agent.env", "agent"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module == "agent":
                names.update(f"agent.{alias.name}" for alias in node.names)
    return names


def test_agent_imports_only_stdlib_mqtt_and_cryptography():
    for path in (ROOT / "agent").rglob("*.py"):
        for name in _imports(path):
            top = name.split(".")[0]
            assert top in sys.stdlib_module_names or top in AGENT_ALLOWED or top == "__future__", (path, name)


def test_platform_takes_only_the_contract_from_the_agent():
    platform_modules = [p for p in (ROOT / "harness").glob("*.py") if p.name != "pytest_plugin.py"]
    assert platform_modules
    for path in platform_modules:
        for name in _imports(path):
            if name.split(".")[0] == "agent":
                assert name in PLATFORM_FROM_AGENT, (path, name)
            assert name.split(".")[0] != "simulators", (path, name)
