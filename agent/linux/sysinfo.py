"""What a Linux system says about itself: /proc, /sys, DMI (x86) and the device tree (ARM).

x86 firmware is identified by SMBIOS (/sys/class/dmi/id: bios_vendor, bios_version, bios_date,
sys_vendor, product_name). Device-tree boards have no DMI: the model is in
/proc/device-tree/model and the firmware is U-Boot, whose version `fw_printenv` reads from its
environment when the tool is installed. Every reader takes a root directory so tests (and a
QEMU image mounted on the host) can point it elsewhere; a file that is missing reads as "".
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.hardware import FirmwareInfo
from agent.linux import commands

#: What firmware_info reports when the firmware says nothing of its date (any FOTA is newer).
UNKNOWN_DATE = dt.date(1970, 1, 1)
_UBOOT_DATE = re.compile(r"\((\w{3} \d{1,2} \d{4})")
_SKIPPED_BLOCK = ("loop", "ram", "zram", "dm-", "sr", "fd")


def read(path: Path, default: str = "", limit: int = 64 * 1024) -> str:
    """A small text file from /proc or /sys, stripped; `default` when it cannot be read."""
    try:
        with path.open("rb") as handle:
            return handle.read(limit).decode(errors="replace").strip().rstrip("\x00")
    except OSError:
        return default


@dataclass
class _CpuSample:
    busy: int
    total: int


class SysInfo:
    def __init__(self, root: str | Path = "/", state_dir: Path | None = None) -> None:
        self.root = Path(root)
        self.state_dir = state_dir
        self._cpu: _CpuSample | None = None
        self._uboot: str | None = None

    # -- facts ------------------------------------------------------------------------------------

    def dmi(self, name: str) -> str:
        return read(self.root / "sys/class/dmi/id" / name)

    def model(self) -> str:
        return read(self.root / "proc/device-tree/model")

    def uboot_version(self) -> str:
        """U-Boot's `ver` variable (e.g. 'U-Boot 2023.04 (Apr 01 2023 - 12:00:00 +0000)'), or ""."""
        if self._uboot is None:
            self._uboot = ""
            if self.model() and commands.which("fw_printenv"):
                self._uboot = commands.output(["fw_printenv", "-n", "ver"]).strip()
        return self._uboot

    def memory_kib(self) -> dict[str, int]:
        values: dict[str, int] = {}
        for line in read(self.root / "proc/meminfo").splitlines():
            name, _, rest = line.partition(":")
            fields = rest.split()
            if fields and fields[0].isdigit():
                values[name.strip()] = int(fields[0])
        return values

    def disks(self) -> list[dict[str, Any]]:
        block = self.root / "sys/block"
        try:
            names = sorted(p.name for p in block.iterdir())
        except OSError:
            return []
        disks = []
        for name in names:
            if name.startswith(_SKIPPED_BLOCK):
                continue
            sectors = read(block / name / "size", "0")
            rotational = read(block / name / "queue/rotational", "0")
            disks.append({"name": name, "size": int(sectors) * 512 if sectors.isdigit() else 0,
                          "ssd": rotational == "0"})
        return disks

    def cpu_model(self) -> str:
        for line in read(self.root / "proc/cpuinfo", limit=256 * 1024).splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() in ("model name", "hardware", "cpu model") and value.strip():
                return value.strip()
        return platform.machine()

    def os_release(self) -> dict[str, str]:
        values = {}
        for line in read(self.root / "etc/os-release").splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key.strip()] = value.strip().strip('"')
        return values

    def os_name(self) -> str:
        return self.os_release().get("PRETTY_NAME") or f"{platform.system()} {platform.release()}"

    def facts(self) -> dict[str, Any]:
        model = self.model()
        firmware = self.firmware_info()
        memory = self.memory_kib()
        return {
            "bios_vendor": firmware.vendor,
            "bios_version": firmware.version,
            "bios_release_date": firmware.release_date.isoformat(),
            "cpu_id": self.cpu_model(),
            "os": self.os_name(),
            "kernel": os.uname().release,
            "arch": platform.machine(),
            "manufacturer": firmware.manufacturer,
            "product": firmware.product,
            "model": model or None,
            "total_memory": memory.get("MemTotal", 0) * 1024,
            "disks": self.disks(),
            "hostname": os.uname().nodename,
            "rootfs": self.os_release().get("VERSION_ID") or self.os_release().get("BUILD_ID"),
        }

    # -- firmware -----------------------------------------------------------------------------------

    def firmware_info(self) -> FirmwareInfo:
        model = self.model()
        vendor = self.dmi("bios_vendor")
        if vendor:  # x86 (and ARM servers): SMBIOS
            return FirmwareInfo(vendor=vendor, version=self.dmi("bios_version") or "unknown",
                                release_date=_dmi_date(self.dmi("bios_date")),
                                manufacturer=self.dmi("sys_vendor") or "unknown",
                                product=self.dmi("product_name") or "unknown")
        uboot = self.uboot_version()
        match = _UBOOT_DATE.search(uboot)
        date = UNKNOWN_DATE
        if match:
            with contextlib.suppress(ValueError):
                date = dt.datetime.strptime(match.group(1), "%b %d %Y").date()
        return FirmwareInfo(vendor="U-Boot" if uboot else "unknown",
                            version=(uboot.split("(")[0].strip() or self.firmware_version())[:128],
                            release_date=date,
                            manufacturer=model.split()[0] if model else "unknown",
                            product=model or "unknown")

    def firmware_version(self) -> str:
        for text in (self.dmi("bios_version"), self.uboot_version(),
                     read(self.root / "etc/fleetrig/firmware-version"), read(self.root / "etc/version")):
            line = text.splitlines()[0].split("(")[0].strip() if text else ""
            if line:
                return line[:128]
        return self.os_name()[:128]

    # -- resources ----------------------------------------------------------------------------------

    def cpu_percent(self) -> float:
        """Busy share of all CPUs since the previous call (since boot on the first)."""
        fields = read(self.root / "proc/stat").splitlines()[:1]
        parts = fields[0].split()[1:] if fields and fields[0].startswith("cpu ") else []
        numbers = [int(p) for p in parts if p.isdigit()]
        if len(numbers) < 4:
            return 0.0
        idle = numbers[3] + (numbers[4] if len(numbers) > 4 else 0)
        sample = _CpuSample(busy=sum(numbers) - idle, total=sum(numbers))
        previous, self._cpu = self._cpu, sample
        if previous is None or sample.total <= previous.total:
            return round(100 * sample.busy / max(1, sample.total), 1)
        return round(100 * (sample.busy - previous.busy) / (sample.total - previous.total), 1)

    def temperature_c(self) -> float:
        """The hottest thermal zone (the SoC on most boards); 0.0 where there is none."""
        zones = self.root / "sys/class/thermal"
        readings = []
        try:
            for zone in zones.glob("thermal_zone*"):
                text = read(zone / "temp")
                if text.lstrip("-").isdigit():
                    readings.append(int(text) / 1000)
        except OSError:
            pass
        return round(max(readings), 1) if readings else 0.0

    def battery_percent(self) -> int | None:
        supplies = self.root / "sys/class/power_supply"
        try:
            for supply in sorted(supplies.iterdir()):
                if read(supply / "type") == "Battery":
                    text = read(supply / "capacity")
                    if text.isdigit():
                        return int(text)
        except OSError:
            pass
        return None

    def storage_mb(self) -> tuple[int, float]:
        """Free MB and used percent of the file system that holds the agent's state."""
        path = self.state_dir if self.state_dir is not None and self.state_dir.exists() else self.root
        try:
            st = os.statvfs(path)
        except OSError:
            return 0, 0.0
        total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
        used = 100 * (total - st.f_bfree * st.f_frsize) / total if total else 0.0
        return free // (1024 * 1024), round(used, 1)

    def network(self) -> dict[str, Any]:
        counters: dict[str, Any] = {}
        for line in read(self.root / "proc/net/dev").splitlines()[2:]:
            name, _, rest = line.partition(":")
            fields = rest.split()
            if name.strip() != "lo" and len(fields) >= 9:
                counters[name.strip()] = {"rx_bytes": int(fields[0]), "tx_bytes": int(fields[8])}
        return counters


def _dmi_date(text: str) -> dt.date:
    """SMBIOS dates are MM/DD/YYYY."""
    for fmt in ("%m/%d/%Y", "%Y-%m-%d"):
        try:
            return dt.datetime.strptime(text.strip(), fmt).date()
        except ValueError:
            continue
    return UNKNOWN_DATE
