"""A modelled package manager (apt) and image updater (mender) for simulated devices.

apt modes as SOTA uses them: `full` downloads and installs every pending upgrade,
`download-only` fills the package cache and installs nothing, `no-download` installs only what
the cache already holds. A mender artifact replaces the root file system image; the new image
runs from the next boot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.hardware import SOTA_MODES, HardwareError
from agent.hardware import SOURCE_FILE as _SOURCE_FILE
from agent.wire import ResultCode


def _bump(version: str) -> str:
    head, _, last = version.rpartition(".")
    return f"{head}.{int(last) + 1}" if last.isdigit() and head else version + ".1"


@dataclass
class SimulatedPackageManager:
    installed_: dict[str, str] = field(default_factory=dict)
    available: dict[str, str] = field(default_factory=dict)  # package -> newer version in the archive
    cache: dict[str, str] = field(default_factory=dict)  # downloaded, not installed
    sources_: dict[str, list[str]] = field(default_factory=dict)
    rootfs_version: str = ""
    staged_rootfs: str | None = None
    history: list[str] = field(default_factory=list)

    @classmethod
    def for_os(cls, os_name: str, seed: int) -> SimulatedPackageManager:
        base = {"docker.io": "24.0.7", "trtl": "4.2.1", "inbm-telemetry": "4.2.1", "openssl": "3.0.13",
                "libc6": "2.35.0", "curl": "7.81.0", "python3": "3.10.12", "systemd": "249.11"}
        pending = {name: _bump(version) for i, (name, version) in enumerate(sorted(base.items()))
                   if (seed >> i) & 1}
        pending.setdefault("openssl", _bump(base["openssl"]))
        distro = os_name.split()[0].lower()
        return cls(installed_=dict(base), available=pending,
                   sources_={"sources.list": [f"deb http://archive.example.com/{distro} stable main"]},
                   rootfs_version=f"{distro}-rootfs-1")

    def installed(self) -> dict[str, str]:
        return dict(self.installed_)

    def update(self, mode: str, packages: list[str] | None = None) -> list[str]:
        if mode not in SOTA_MODES:
            raise HardwareError(ResultCode.INSTALL_FAILURE,
                                f"SOTA mode must be one of {', '.join(SOTA_MODES)}, got {mode!r}")
        wanted = packages or sorted(self.available)
        unknown = [p for p in wanted if p not in self.available and p not in self.installed_]
        if unknown:
            raise HardwareError(ResultCode.INSTALL_FAILURE, f"E: Unable to locate package {unknown[0]}")
        changed: list[str] = []
        for name in wanted:
            if name not in self.available:
                continue
            version = self.available[name]
            if mode == "download-only":
                self.cache[name] = version
                changed.append(f"{name} {version} (downloaded)")
            elif mode == "no-download":
                if self.cache.get(name) == version:
                    self.installed_[name] = version
                    del self.cache[name]
                    del self.available[name]
                    changed.append(f"{name} {version}")
            else:
                self.installed_[name] = version
                self.cache.pop(name, None)
                del self.available[name]
                changed.append(f"{name} {version}")
        self.history.append(f"apt {mode}: {', '.join(changed) or 'nothing to do'}")
        return changed

    def install_mender(self, artifact: Path) -> str:
        if artifact.suffix != ".mender":
            raise HardwareError(ResultCode.INSTALL_FAILURE, f"{artifact.name} is not a mender artifact (.mender)")
        if artifact.stat().st_size == 0:
            raise HardwareError(ResultCode.INSTALL_FAILURE, f"{artifact.name} is empty")
        self.staged_rootfs = artifact.stem
        self.history.append(f"mender install {artifact.name}")
        return self.staged_rootfs

    def boot(self) -> None:
        """Run the staged root file system, if any (called at every boot)."""
        if self.staged_rootfs:
            self.rootfs_version, self.staged_rootfs = self.staged_rootfs, None

    def sources(self) -> dict[str, list[str]]:
        return {name: list(lines) for name, lines in self.sources_.items()}

    def add_source(self, filename: str, lines: list[str]) -> None:
        if not _SOURCE_FILE.match(filename):
            raise HardwareError(ResultCode.INSTALL_FAILURE, f"invalid apt source file name {filename!r}")
        self.sources_[filename] = list(lines)

    def remove_source(self, filename: str) -> None:
        if filename not in self.sources_:
            raise HardwareError(ResultCode.INSTALL_FAILURE, f"no apt source file {filename}")
        del self.sources_[filename]
