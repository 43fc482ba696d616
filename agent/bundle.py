"""Build the agent's zipapp: the agent and its pure-Python dependencies in one file.

    fleetrig agent bundle --out fleetrig-agent.pyz
    python3 -I fleetrig-agent.pyz --env /etc/fleetrig/agent.env --state /var/lib/fleetrig

A Debian 12 device runs it with its own python3 and python3-cryptography (cryptography is a
compiled library, so it is never bundled). The dependencies are copied from the distributions
installed next to this agent, dist-info included, so the compat modules' version guards read
the real versions inside the bundle too.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import tempfile
import zipapp
from dataclasses import dataclass
from pathlib import Path

#: Distributions the bundle carries (aiomqtt and paho-mqtt, the XML pair and xmlschema's own
#: dependency). typing-extensions is needed by aiomqtt and paho only before Python 3.11.
BUNDLED = ("aiomqtt", "paho-mqtt", "defusedxml", "xmlschema", "elementpath")
INTERPRETER = "/usr/bin/python3 -I"
AGENT_DIR = Path(__file__).resolve().parent
BOOT_MODULE = AGENT_DIR / "bundle_boot.py"


class BundleError(RuntimeError):
    pass


@dataclass(frozen=True)
class Bundle:
    path: Path
    size: int
    distributions: dict[str, str]


def _skip(parts: tuple[str, ...]) -> bool:
    return ".." in parts or "__pycache__" in parts or parts[-1].endswith((".pyc", ".pyo"))


def _distribution(name: str) -> importlib.metadata.Distribution:
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        raise BundleError(f"{name} is not installed here: run pip install fleetrig") from None
    if not dist.files:
        raise BundleError(f"{name} {dist.version} lists no files (no RECORD): reinstall it with pip")
    return dist


def contents() -> dict[str, str]:
    """What a bundle built here would carry, {distribution: version}, without building it."""
    return {name: _distribution(name).version for name in BUNDLED}


def _copy_distribution(name: str, staging: Path) -> str:
    dist = _distribution(name)
    files = dist.files
    for file in files or ():
        if _skip(file.parts):
            continue
        source = Path(str(dist.locate_file(file)))
        if not source.is_file():
            continue
        target = staging / Path(*file.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return dist.version


def build(out: Path) -> Bundle:
    """Write the bundle to `out` (replacing it); return what went in."""
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="fleetrig-bundle-") as tmp:
        staging = Path(tmp) / "app"
        shutil.copytree(AGENT_DIR, staging / "agent", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        versions = {name: _copy_distribution(name, staging) for name in BUNDLED}
        shutil.copy2(BOOT_MODULE, staging / "__main__.py")
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(f".{out.name}.tmp")
        zipapp.create_archive(staging, partial, interpreter=INTERPRETER, compressed=True)
        partial.replace(out)
    return Bundle(out, out.stat().st_size, versions)
