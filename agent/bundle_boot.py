"""The `__main__` of the agent's zipapp bundle (agent/bundle.py copies it in).

A zipapp cannot run the agent straight from the archive: xmlschema reads its XSD meta-schemas
(and the agent its manifest schema) by file path, which a zip member does not have. So the
bundle unpacks itself once into a cache directory named by its own SHA-256 (as shiv does),
puts that directory first on sys.path instead of the archive, and starts the agent from there.
A second start of the same bundle finds the directory complete and only hashes the archive.
Standard library only: it runs before anything else is importable.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

#: Set it to choose where bundles unpack (default /var/cache/fleetrig as root, else ~/.cache/fleetrig).
CACHE_VARIABLE = "FLEETRIG_AGENT_CACHE"
_COMPLETE = ".complete"


def cache_root() -> Path:
    chosen = os.environ.get(CACHE_VARIABLE)
    if chosen:
        return Path(chosen)
    if os.geteuid() == 0:
        return Path("/var/cache/fleetrig")
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fleetrig"


def unpack(archive: Path) -> Path:
    """The directory holding the archive's files, unpacked on the first start."""
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()[:16]
    root = cache_root()
    target = root / f"agent-{digest}"
    if (target / _COMPLETE).exists():
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".agent-", dir=root))
    except OSError:  # no writable cache: unpack for this run only
        staging = Path(tempfile.mkdtemp(prefix="fleetrig-agent-"))
        target = staging
    with zipfile.ZipFile(archive) as bundle:
        bundle.extractall(staging)
    (staging / _COMPLETE).touch()
    if staging != target:
        try:
            os.rename(staging, target)
        except OSError:  # another start of the same bundle got there first
            shutil.rmtree(staging, ignore_errors=True)
    return target


def main() -> None:
    archive = Path(__file__).resolve().parent
    if zipfile.is_zipfile(archive):
        unpacked = str(unpack(archive))
        sys.path[:] = [unpacked, *(p for p in sys.path if Path(p).resolve() != archive)]
    from agent.__main__ import main as agent_main

    agent_main()


if __name__ == "__main__":
    main()
