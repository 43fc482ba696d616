"""The agent travels light, and the platform shares only the wire contract with it."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# DESIGN.md section 4: the standard library, cryptography (Debian's python3-cryptography) and the
# pure-Python wheels the bundle carries (agent/bundle.py BUNDLED).
AGENT_ALLOWED = {"aiomqtt", "paho", "cryptography", "defusedxml", "xmlschema", "agent"}
#: Where the agent may import paho at all: its internals are overridden in one place.
PAHO_USERS = {"paho_compat.py"}
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


def test_agent_imports_only_stdlib_cryptography_and_the_bundled_wheels():
    for path in (ROOT / "agent").rglob("*.py"):
        for name in _imports(path):
            top = name.split(".")[0]
            assert top in sys.stdlib_module_names or top in AGENT_ALLOWED or top == "__future__", (path, name)


def test_library_internals_are_overridden_only_in_compat_modules():
    for path in (ROOT / "agent").rglob("*.py"):
        if any(name.split(".")[0] == "paho" for name in _imports(path)):
            assert path.name in PAHO_USERS, path
        text = path.read_text()
        if not path.name.endswith("_compat.py"):
            assert "._client." not in text and "_on_socket_register_write" not in text, path
        assert "gc.set_threshold" not in text, path  # process-wide tuning belongs to entry points


def test_platform_takes_only_the_contract_from_the_agent():
    # The server side and the operator library (the CLI and the pytest plugin run devices too).
    platform_modules = [p for part in ("platform", "broker", "client") for p in (ROOT / "harness" / part).rglob("*.py")]
    assert platform_modules
    for path in platform_modules:
        for name in _imports(path):
            if name.split(".")[0] == "agent":
                assert name in PLATFORM_FROM_AGENT, (path, name)
            assert name.split(".")[0] != "simulators", (path, name)
