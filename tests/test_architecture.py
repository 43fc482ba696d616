"""The architecture's import rules (DESIGN.md section 4), checked on every module of every package.

Each module belongs to one role, named by its folder. A role may import only the roles the table
below allows it; everything else is a break of the layout, reported with the file, the line and
the import. The rules in words:

* `agent/` travels alone onto devices: the standard library, its pure-Python wheels and
  cryptography, nothing else of the project.
* the platform takes from the agent only the wire contract and the agent.env format;
* `harness/broker/` imports nothing of the platform: the platform hands it an authenticator;
* `harness/client/` is the operator library: nothing of the server (platform, broker) nor its
  third-party stack, so a script that drives a platform does not load one; it writes the
  agent.env files provisioning returns with the contract's own writer;
* the REST API is built from a narrow services object: `api.py` never sees the process module;
* only `cli/` and `pytest_plugin/` assemble parts (the platform process, simulated devices,
  the client) into something a user runs; nothing imports them.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agent", "harness", "simulators")

AGENT_THIRD_PARTY = {"aiomqtt", "paho", "cryptography", "defusedxml", "xmlschema"}
#: What the platform and the broker may take from the agent: the wire contract and agent.env.
CONTRACT = {"agent.wire", "agent.env"}
#: Where a library's private internals may be touched: its one compat module (DESIGN.md section 4).
PAHO_USERS = {"agent/paho_compat.py"}
#: Process-wide tuning belongs to entry points, which call this one module.
TUNING = {"harness/broker/tuning.py"}
#: The third-party stack of the server; the operator library must load none of it.
SERVER_STACK = {"amqtt", "fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic"}

#: role -> the project roles it may import (a role may always import itself).
ALLOWED: dict[str, set[str]] = {
    "agent": set(),
    "harness.shared": set(),
    "harness.broker": {"harness.shared", "agent.contract"},
    "harness.platform": {"harness.shared", "harness.broker", "agent.contract"},
    "harness.client": {"harness.shared", "agent.contract"},
    "harness.drivers": {"harness.shared"},
    "harness.cli": {"harness.shared", "harness.platform", "harness.broker", "harness.client", "agent",
                    "simulators", "harness.drivers", "harness.lab"},
    "harness.pytest_plugin": {"harness.shared", "harness.platform", "harness.broker", "harness.client", "agent",
                              "simulators", "harness.drivers", "harness.lab"},
    "simulators": {"agent"},
    "harness.lab": {"harness.shared", "harness.drivers", "agent"},
}


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    name: str
    why: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: imports {self.name}: {self.why}"


def role_of_module(name: str) -> str | None:
    """The role a dotted module name belongs to; None for modules outside the project."""
    parts = name.split(".")
    if parts[0] == "agent":
        contract = name == "agent" or any(name == c or name.startswith(c + ".") for c in CONTRACT)
        return "agent.contract" if contract else "agent"
    if parts[0] == "simulators":
        return "simulators"
    if parts[0] == "harness":
        if len(parts) == 1 or parts[1] in ("errors", "datadir"):
            return "harness.shared"
        return f"harness.{parts[1]}"
    return None


def role_of_path(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    role = role_of_module(".".join(parts))
    assert role is not None, path
    return "agent" if role == "agent.contract" else role


def imports(source: str) -> list[tuple[int, str]]:
    """Every absolute import of a module, with its line.

    `from agent import wire` counts as agent.wire: a name taken from a package is a module.
    """
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if role_of_module(node.module) is not None and (ROOT / node.module.replace(".", "/")).is_dir():
                found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return found


def check(path: Path, source: str, role: str, module: str) -> list[Violation]:
    """The breaks of the layout in one module's source."""
    rel = str(path.relative_to(ROOT)) if path.is_absolute() else str(path)
    out: list[Violation] = []
    for line, name in imports(source):
        top = name.split(".")[0]
        target = role_of_module(name)
        if target is None:
            if role == "agent" and top not in sys.stdlib_module_names and top not in AGENT_THIRD_PARTY \
                    and top != "__future__":
                out.append(Violation(rel, line, name, "the agent takes only the standard library, "
                                     f"{', '.join(sorted(AGENT_THIRD_PARTY))}"))
            if role == "harness.client" and top in SERVER_STACK:
                out.append(Violation(rel, line, name, "the operator library must not load the server stack"))
            continue
        if module == "harness.platform.api" and name.startswith("harness.platform.process"):
            out.append(Violation(rel, line, name, "the API is built from its services object, not the process"))
        if target == role or (role == "agent" and target == "agent.contract"):
            continue
        allowed = ALLOWED[role] | ({"agent.contract"} if "agent" in ALLOWED[role] else set())
        if target not in allowed:
            out.append(Violation(rel, line, name, f"{role} may import only {sorted(ALLOWED[role]) or 'itself'}"))
    return out


def project_modules() -> list[tuple[Path, str]]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found.append((path, ".".join(parts)))
    return found


def test_every_subpackage_is_walked():
    roles = {role_of_path(path) for path, _ in project_modules()}
    assert {"agent", "harness.platform", "harness.broker", "harness.client", "harness.cli",
            "harness.pytest_plugin", "simulators"} <= roles
    assert roles <= set(ALLOWED), roles - set(ALLOWED)


def test_import_rules_hold():
    violations = [v for path, module in project_modules()
                  for v in check(path, path.read_text(), role_of_path(path), module)]
    assert not violations, "layout broken:\n" + "\n".join(map(str, violations))


def test_library_internals_are_overridden_only_in_compat_modules():
    for path, _ in project_modules():
        rel = str(path.relative_to(ROOT))
        text = path.read_text()
        if any(name.split(".")[0] == "paho" for _, name in imports(text)) and rel.startswith("agent/"):
            assert rel in PAHO_USERS, f"{rel} imports paho: its internals belong in agent/paho_compat.py"
        if not path.name.endswith("_compat.py"):
            assert "._client." not in text and "_on_socket_register_write" not in text, rel
        if rel not in TUNING:
            assert "gc.set_threshold" not in text, f"{rel}: process-wide tuning belongs to entry points"


def test_a_forbidden_import_is_caught():
    """The checker itself: a client module that reaches into the server is reported, with its line."""
    source = "import httpx\nfrom harness.platform.db import Registry\n"
    path = Path("harness/client/example.py")
    found = check(path, source, "harness.client", "harness.client.example")
    assert [(v.line, v.name) for v in found] == [(2, "harness.platform.db")]
    assert "harness.client may import only" in str(found[0])
    assert check(Path("agent/x.py"), "import sqlalchemy\n", "agent", "agent.x")[0].name == "sqlalchemy"
    api = check(Path("harness/platform/api.py"), "from harness.platform.process import Platform\n",
                "harness.platform", "harness.platform.api")
    assert any("services object" in v.why for v in api)


def test_operator_library_loads_no_server():
    code = ("import sys, harness.client; "
            f"print(','.join(sorted(m for m in {sorted(SERVER_STACK)!r} if m in sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=ROOT).stdout.strip()
    assert loaded == "", f"import harness.client loaded {loaded}"
