"""What the agent needs to know about the hardware it runs on, behind one small interface.

The agent is the same on every kind of device; what differs is how the hardware is reached. A
real Linux device reads /sys and /proc and runs apt, docker and systemctl (agent/linux/); a
simulated device gets all of it from its modelled hardware (simulators/).
"""

from __future__ import annotations

import datetime as dt
import re
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


#: SOTA's apt modes, as every PackageManager takes them.
SOTA_MODES = ("full", "no-download", "download-only")
#: A package source file name a PackageManager accepts (what apt reads in sources.list.d).
SOURCE_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\.(list|sources)$")


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
