"""LinuxHardware: the Hardware interface (agent/hardware.py) over the capability modules.

Firmware updates have no single tool on Linux (fwupd on PCs, a U-Boot partition write or an
A/B slot switch on boards), so FOTA runs the command the device is set up with
(`--firmware-command 'tool --write {image}'`); without one it answers 400 and says so.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

from agent.hardware import FirmwareInfo, HardwareError, Resources
from agent.linux import commands
from agent.linux.apt import AptPackageManager
from agent.linux.docker import DockerRuntime
from agent.linux.power import PowerControl
from agent.linux.sysinfo import SysInfo
from agent.wire import ResultCode

NO_FIRMWARE_TOOL = "no firmware updater configured on this device (start the agent with --firmware-command)"


class LinuxHardware:
    """The Linux system the agent runs on (a real board, a PC or a QEMU guest)."""

    def __init__(self, root: str | Path = "/", *, state_dir: Path | None = None, reboot_command: str | None = None,
                 shutdown_command: str | None = None, firmware_command: str | None = None,
                 sota_dry_run: bool = False) -> None:
        self.root = Path(root)
        self.info = SysInfo(self.root, state_dir)
        self.containers = DockerRuntime()
        self.packages = AptPackageManager(self.root, dry_run=sota_dry_run)
        self.power = PowerControl(reboot_command, shutdown_command, self.root)
        self.firmware_command = shlex.split(firmware_command) if firmware_command else None

    def facts(self) -> dict[str, Any]:
        return self.info.facts()

    def firmware_version(self) -> str:
        return self.info.firmware_version()

    def firmware_info(self) -> FirmwareInfo:
        return self.info.firmware_info()

    def stage_firmware(self, image: Path, target: FirmwareInfo) -> None:
        if image.stat().st_size == 0:
            raise HardwareError(ResultCode.INSTALL_FAILURE, f"firmware image {image.name} is empty")
        if not self.firmware_command:
            raise HardwareError(ResultCode.INSTALL_FAILURE, NO_FIRMWARE_TOOL)
        argv = [part.replace("{image}", str(image)).replace("{version}", target.version)
                for part in self.firmware_command]
        commands.run(argv, what="FOTA", timeout=1800)

    def resources(self) -> Resources:
        memory = self.info.memory_kib()
        free_storage, used_percent = self.info.storage_mb()
        return Resources(
            free_storage_mb=free_storage,
            free_memory_mb=memory.get("MemAvailable", memory.get("MemFree", 0)) // 1024,
            total_memory_mb=memory.get("MemTotal", 0) // 1024,
            battery_percent=self.info.battery_percent(),
            cpu_percent=self.info.cpu_percent(),
            core_temp_c=self.info.temperature_c(),
            disk_used_percent=used_percent,
            network=self.info.network(),
        )

    def installed_software(self) -> set[str]:
        """Installed packages and the commands on PATH (docker may come from a tarball, not a package)."""
        names = set(self.packages.installed())
        for directory in os.environ.get("PATH", "").split(os.pathsep):
            try:
                names.update(os.listdir(directory))
            except OSError:
                continue
        return names

    def reboot(self) -> None:
        self.power.act("reboot")

    def shutdown(self) -> None:
        self.power.act("shutdown")
