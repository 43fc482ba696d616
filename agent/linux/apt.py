"""SOTA on a Debian-family device: apt-get and dpkg for packages, mender for whole images.

The three modes of the seed map to apt-get's own options: `full` upgrades (downloads and
installs), `download-only` fills the package cache (`--download-only`, nothing is installed),
`no-download` installs only what the cache holds (`--no-download --ignore-missing`). What a run
changes is read from apt-get's simulation (`-s`, the "Inst" lines) before the real run, so the
result names each package and version. `dry_run` stops after the simulation: nothing is
downloaded or installed and no package list is refreshed (a check of the whole path on a
machine that must not change, such as a test host).
"""

from __future__ import annotations

import re
from pathlib import Path

from agent.hardware import SOTA_MODES, SOURCE_FILE, HardwareError
from agent.linux import commands
from agent.state import write_atomic
from agent.wire import ResultCode

_INST = re.compile(r"^Inst (\S+) (?:\[(\S+)\] )?\((\S+)")
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]{0,127}$")
_APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
_CONF_OPTIONS = ["-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold"]
NO_APT = "no package manager on this device (apt-get and dpkg are not installed)"
NO_MENDER = "no mender client on this device (neither mender-update nor mender is installed)"


class AptPackageManager:
    def __init__(self, root: str | Path = "/", *, dry_run: bool = False, timeout: float = 1800.0) -> None:
        self.root = Path(root)
        self.dry_run = dry_run
        self.timeout = timeout

    def _require_apt(self) -> None:
        if not (commands.which("apt-get") and commands.which("dpkg-query")):
            raise HardwareError(ResultCode.INSTALL_FAILURE, NO_APT)

    def installed(self) -> dict[str, str]:
        if not commands.which("dpkg-query"):
            return {}
        text = commands.output(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}\t${Package}\t${Version}\n"], 30)
        packages = {}
        for line in text.splitlines():
            status, _, rest = line.partition("\t")
            name, _, version = rest.partition("\t")
            if status.startswith("ii") and name:
                packages[name] = version
        return packages

    def update(self, mode: str, packages: list[str] | None = None) -> list[str]:
        if mode not in SOTA_MODES:
            raise HardwareError(ResultCode.INSTALL_FAILURE,
                                f"SOTA mode must be one of {', '.join(SOTA_MODES)}, got {mode!r}")
        self._require_apt()
        for name in packages or []:
            if not _PACKAGE.match(name):
                raise HardwareError(ResultCode.INSTALL_FAILURE, f"E: invalid package name {name[:60]!r}")
        if mode != "no-download" and not self.dry_run:
            commands.run(["apt-get", "update", "-q"], what="apt-get update", timeout=self.timeout, env=_APT_ENV)
        action = ["install", "--only-upgrade", *packages] if packages else ["upgrade"]
        options = {"full": [], "download-only": ["--download-only"],
                   "no-download": ["--no-download", "--ignore-missing"]}[mode]
        argv = ["apt-get", "-y", "-q", *_CONF_OPTIONS, *options, *action]
        plan = commands.run([*argv[:1], "-s", *argv[1:]], what=f"SOTA {mode}", timeout=300, env=_APT_ENV)
        changed = [f"{name} {new}" + (" (downloaded)" if mode == "download-only" else "")
                   for name, _old, new in (m.groups() for m in map(_INST.match, plan.splitlines()) if m)]
        if changed and not self.dry_run:
            commands.run(argv, what=f"SOTA {mode}", timeout=self.timeout, env=_APT_ENV)
        return changed

    def install_mender(self, artifact: Path) -> str:
        if artifact.suffix != ".mender":
            raise HardwareError(ResultCode.INSTALL_FAILURE, f"{artifact.name} is not a mender artifact (.mender)")
        tool = commands.which("mender-update") or commands.which("mender")
        if tool is None:
            raise HardwareError(ResultCode.INSTALL_FAILURE, NO_MENDER)
        commands.run([tool, "install", str(artifact)], what="mender install", timeout=self.timeout)
        return artifact.stem

    # -- package sources -----------------------------------------------------------------------------

    def _source_path(self, filename: str) -> Path:
        if filename == "sources.list":
            return self.root / "etc/apt/sources.list"
        if not SOURCE_FILE.match(filename):
            raise HardwareError(ResultCode.INSTALL_FAILURE, f"invalid apt source file name {filename[:80]!r}")
        return self.root / "etc/apt/sources.list.d" / filename

    def sources(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        main = self.root / "etc/apt/sources.list"
        listing = [main, *sorted((self.root / "etc/apt/sources.list.d").glob("*"))]
        for path in listing:
            if path.is_file() and (path == main or SOURCE_FILE.match(path.name)):
                try:
                    lines = path.read_text(errors="replace").splitlines()
                except OSError:
                    continue
                found[path.name] = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
        return found

    def add_source(self, filename: str, lines: list[str]) -> None:
        path = self._source_path(filename)
        if any("\n" in line or "\r" in line for line in lines):
            raise HardwareError(ResultCode.INSTALL_FAILURE, "an apt source line cannot contain a line break")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, "".join(f"{line}\n" for line in lines), 0o644)

    def remove_source(self, filename: str) -> None:
        path = self._source_path(filename)
        if not path.is_file():
            raise HardwareError(ResultCode.INSTALL_FAILURE, f"no apt source file {filename}")
        path.unlink()
