"""What the agent needs to know about the hardware it runs on, behind one small interface.

The agent is the same on every kind of device; what differs is how facts are read. A real
Linux device reads them from /sys and /proc (LinuxHardware, here); a simulated device gets them
from its modelled hardware (simulators/). Later capabilities (block devices, container runtime,
package manager, power, secure storage) join this interface the same way.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class HardwareError(Exception):
    """A hardware operation failed; `status` is the result code the agent reports (seed 002)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class FirmwareInfo:
    """What FOTA compares: the platform's firmware identity (SMBIOS on x86, U-Boot/DT on ARM)."""

    vendor: str
    version: str
    release_date: dt.date
    manufacturer: str
    product: str


@dataclass(frozen=True)
class Resources:
    """A reading of what diagnostics and dynamic telemetry look at."""

    free_storage_mb: int
    free_memory_mb: int
    total_memory_mb: int
    battery_percent: int | None  # None: mains powered
    cpu_percent: float
    core_temp_c: float
    disk_used_percent: float
    network: dict[str, Any] = field(default_factory=dict)


class ContainerRuntime(Protocol):
    """The device's container engine (docker / docker-compose), as AOTA drives it."""

    def images(self) -> list[dict[str, Any]]: ...
    def containers(self) -> list[dict[str, Any]]: ...
    def stats(self) -> list[dict[str, Any]]: ...
    def image_import(self, archive: Path, tag: str) -> str: ...
    def image_load(self, archive: Path) -> list[str]: ...
    def image_pull(self, reference: str) -> str: ...
    def image_remove(self, reference: str) -> None: ...
    def compose_up(self, project: str, directory: Path, file: str) -> list[str]: ...
    def compose_down(self, project: str) -> None: ...
    def compose_pull(self, project: str, directory: Path, file: str) -> list[str]: ...
    def compose_list(self) -> list[dict[str, Any]]: ...
    def compose_remove(self, project: str) -> None: ...


class PackageManager(Protocol):
    """The OS package manager (apt) and the image updater (mender), as SOTA drives them."""

    def installed(self) -> dict[str, str]: ...
    def update(self, mode: str, packages: list[str] | None = None) -> list[str]: ...
    def install_mender(self, artifact: Path) -> str: ...
    def sources(self) -> dict[str, list[str]]: ...
    def add_source(self, filename: str, lines: list[str]) -> None: ...
    def remove_source(self, filename: str) -> None: ...


class Hardware(Protocol):
    """The device as the agent sees it."""

    containers: ContainerRuntime
    packages: PackageManager

    def facts(self) -> dict[str, Any]:
        """Static facts published once per boot: BIOS/firmware, CPU, OS, maker, product, memory, disks."""
        ...

    def firmware_version(self) -> str:
        """The version of the firmware image the device booted."""
        ...

    def firmware_info(self) -> FirmwareInfo:
        """The running firmware's identity, for FOTA's vendor/product/date checks."""
        ...

    def stage_firmware(self, image: Path, target: FirmwareInfo) -> None:
        """Write a firmware image; it runs from the next boot on."""
        ...

    def resources(self) -> Resources:
        """Storage, memory, battery, load: what diagnostics and telemetry read."""
        ...

    def installed_software(self) -> set[str]:
        """Names of installed software, for the mandatory-software diagnostic."""
        ...

    def reboot(self) -> None:
        """Ask for a reboot: the device goes offline and boots again."""
        ...

    def shutdown(self) -> None:
        """Ask for a shutdown: the device goes offline and stays off."""
        ...


def _read(path: Path, default: str = "") -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return default


class LinuxHardware:
    """Facts of the Linux system the agent runs on (a real board or a QEMU guest)."""

    def __init__(self, root: str | Path = "/") -> None:
        self.root = Path(root)

    def _dmi(self, name: str) -> str:
        return _read(self.root / "sys/class/dmi/id" / name)

    def _model(self) -> str:
        # Device-tree boards (i.MX and most ARM) have no DMI; the model lives in the device tree.
        return _read(self.root / "proc/device-tree/model").rstrip("\x00")

    def _memory_bytes(self) -> int:
        for line in _read(self.root / "proc/meminfo").splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
        return 0

    def _disks(self) -> list[dict[str, Any]]:
        disks = []
        block = self.root / "sys/block"
        for dev in sorted(block.iterdir()) if block.is_dir() else []:
            if dev.name.startswith(("loop", "ram", "zram")):
                continue
            sectors = _read(dev / "size", "0")
            rotational = _read(dev / "queue/rotational", "0")
            disks.append({"name": dev.name, "size": int(sectors or 0) * 512, "ssd": rotational == "0"})
        return disks

    def _cpu(self) -> str:
        for line in _read(self.root / "proc/cpuinfo").splitlines():
            key = line.split(":", 1)[0].strip().lower()
            if key in ("model name", "hardware", "cpu model"):
                return line.split(":", 1)[1].strip()
        return platform.machine()

    def _os_release(self) -> str:
        for line in _read(self.root / "etc/os-release").splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
        return f"{platform.system()} {platform.release()}"

    def facts(self) -> dict[str, Any]:
        model = self._model()
        return {
            "bios_vendor": self._dmi("bios_vendor") or "unknown",
            "bios_version": self._dmi("bios_version") or "unknown",
            "bios_release_date": self._dmi("bios_date") or "unknown",
            "cpu_id": self._cpu(),
            "os": self._os_release(),
            "kernel": os.uname().release,
            "manufacturer": self._dmi("sys_vendor") or (model.split()[0] if model else "unknown"),
            "product": self._dmi("product_name") or model or "unknown",
            "total_memory": self._memory_bytes(),
            "disks": self._disks(),
        }

    def firmware_version(self) -> str:
        for candidate in ("etc/fleetrig/firmware-version", "etc/version"):
            text = _read(self.root / candidate)
            if text:
                return text.splitlines()[0][:128]
        return self._os_release()[:128]
