"""Modelled hardware behind the agent's Hardware interface, for simulated devices.

One SimulatedHardware is one device: fixed facts from its serial, a firmware slot that takes a
staged image at the next boot, a container runtime, a package manager, storage, memory, a
battery on battery-powered families, and power control wired to whoever runs the device (the
fleet runner cycles the agent on reboot and stops it on shutdown). Tests turn the knobs
(battery, free storage, silence) to drive diagnostics and faults.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.hardware import FirmwareInfo, HardwareError, Resources
from agent.wire import ResultCode
from simulators.containers import SimulatedContainerRuntime
from simulators.families import Family, Noise, _seed, family, initial_firmware, static_facts
from simulators.packages import SimulatedPackageManager

PowerHook = Callable[[str], None]


class SimulatedHardware:
    """A device of one family, modelled in memory."""

    def __init__(self, family_name: str, serial: str, firmware: str | None = None) -> None:
        self.family: Family = family(family_name)
        self.serial = serial
        self._facts = static_facts(self.family, serial)
        self.rng = Noise(_seed(serial))
        self.firmware = firmware or initial_firmware(self.family, serial)
        self.firmware_date = dt.date.fromisoformat(self._facts["bios_release_date"])
        self.staged: tuple[FirmwareInfo, str] | None = None
        self.containers = SimulatedContainerRuntime(storage_mb=self._storage_mb() // 2, rng=self.rng)
        self.packages = SimulatedPackageManager.for_os(self.family.os_name, _seed(serial))
        self.storage_total_mb = self._storage_mb()
        self.storage_used_mb = int(self.storage_total_mb * self.rng.uniform(0.2, 0.5))
        self.memory_total_mb = self._facts["total_memory"] // (1024 * 1024)
        self.memory_used_mb = int(self.memory_total_mb * self.rng.uniform(0.2, 0.5))
        self.battery_percent: int | None = self.rng.randint(55, 100) if family_name == "photon" else None
        self.software = {"docker", "trtl", "inbm-telemetry", "fleetrig-agent"}
        self.power_hook: PowerHook | None = None
        self.boots = 0
        #: Modelled time an install takes (firmware write, package install), in seconds.
        self.install_seconds = 0.0

    def _storage_mb(self) -> int:
        return sum(d[1] for d in self.family.disks) // (1024 * 1024)

    # -- the agent's Hardware interface -----------------------------------------------------------

    def facts(self) -> dict[str, Any]:
        facts = dict(self._facts)
        facts["bios_version"] = self.firmware
        facts["bios_release_date"] = self.firmware_date.isoformat()
        facts["rootfs"] = self.packages.rootfs_version
        return facts

    def firmware_version(self) -> str:
        return self.firmware

    def firmware_info(self) -> FirmwareInfo:
        return FirmwareInfo(vendor=self.family.bios_vendor, version=self.firmware, release_date=self.firmware_date,
                            manufacturer=self.family.manufacturer, product=self.family.product)

    def stage_firmware(self, image: Path, target: FirmwareInfo) -> None:
        if image.stat().st_size == 0:
            raise HardwareError(ResultCode.INSTALL_FAILURE, f"firmware image {image.name} is empty")
        self.staged = (target, image.name)

    def resources(self) -> Resources:
        used = self.storage_used_mb + self.containers.used_mb()
        return Resources(
            free_storage_mb=max(0, self.storage_total_mb - used),
            free_memory_mb=max(0, self.memory_total_mb - self.memory_used_mb),
            total_memory_mb=self.memory_total_mb,
            battery_percent=self.battery_percent,
            cpu_percent=round(self.rng.uniform(2, 60), 1),
            core_temp_c=round(self.rng.uniform(38, 71), 1),
            disk_used_percent=round(100 * used / max(1, self.storage_total_mb), 1),
            network={"eth0": {"rx_bytes": self.rng.randint(10**6, 10**9), "tx_bytes": self.rng.randint(10**5, 10**8)}},
        )

    def installed_software(self) -> set[str]:
        return set(self.software)

    def reboot(self) -> None:
        if self.power_hook:
            self.power_hook("reboot")

    def shutdown(self) -> None:
        if self.power_hook:
            self.power_hook("shutdown")

    # -- what happens at power-on -------------------------------------------------------------------

    def boot(self) -> None:
        """Power-on: a staged firmware or root file system image takes over."""
        self.boots += 1
        if self.staged is not None:
            target, _image = self.staged
            self.firmware, self.firmware_date = target.version, target.release_date
            self.staged = None
        self.packages.boot()
