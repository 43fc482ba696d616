"""The simulated device families and the believable hardware facts of each.

Facts are drawn with Faker seeded by the serial, so a device keeps the same facts on every
boot and in every run, as real hardware does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from faker import Faker

GiB = 1024**3


@dataclass(frozen=True)
class Family:
    name: str
    title: str
    manufacturer: str
    product: str
    bios_vendor: str
    cpu: str
    memory_bytes: tuple[int, ...]
    disks: tuple[tuple[str, int, bool], ...]
    os_name: str
    firmware_prefix: str
    arch: str


FAMILIES: dict[str, Family] = {
    "imx": Family(
        name="imx", title="NXP i.MX board", manufacturer="NXP", product="i.MX 8M Plus EVK",
        bios_vendor="U-Boot", cpu="NXP i.MX8MP Cortex-A53 x4 @ 1.8GHz", memory_bytes=(2 * GiB, 4 * GiB),
        disks=(("mmcblk2", 32 * GiB, True),), os_name="Yocto Project 4.0 (kirkstone) meta-tolomeo",
        firmware_prefix="tolomeo", arch="aarch64",
    ),
    "photon": Family(
        name="photon", title="Photon NX edge node", manufacturer="Connect Tech Inc.",
        product="Photon NX", bios_vendor="NVIDIA", cpu="NVIDIA Carmel ARMv8.2 x6 @ 1.9GHz",
        memory_bytes=(8 * GiB, 16 * GiB),
        disks=(("mmcblk0", 16 * GiB, True), ("mmcblk1", 32 * GiB, True), ("nvme0n1", 1024 * GiB, True)),
        os_name="Ubuntu 20.04 LTS (wildnode)", firmware_prefix="wildnode", arch="aarch64",
    ),
    "x86": Family(
        name="x86", title="x86 INB endpoint", manufacturer="Intel Corporation", product="NUC8i5BEK",
        bios_vendor="Intel Corp.", cpu="Intel(R) Core(TM) i5-8259U CPU @ 2.30GHz",
        memory_bytes=(8 * GiB, 16 * GiB, 32 * GiB),
        disks=(("sda", 256 * GiB, True), ("mmcblk0", 32 * GiB, True)),
        os_name="Ubuntu 22.04.4 LTS", firmware_prefix="BECFL357.86A", arch="x86_64",
    ),
}

FAMILY_NAMES = tuple(FAMILIES)


def family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown device family {name!r}; choose one of {', '.join(FAMILY_NAMES)}") from None


def _seed(serial: str) -> int:
    return int.from_bytes(hashlib.sha256(serial.encode()).digest()[:8], "big")


class Noise:
    """A device's own small random source (xorshift64*): readings that wander, repeatably.

    random.Random keeps 2.5 KiB of state per instance; thousands of simulated devices each need
    only a few numbers a minute, so 8 bytes of state do.
    """

    __slots__ = ("state",)

    def __init__(self, seed: int) -> None:
        self.state = (seed & 0xFFFFFFFFFFFFFFFF) or 0x9E3779B97F4A7C15

    def random(self) -> float:
        x = self.state
        x ^= (x >> 12)
        x ^= (x << 25) & 0xFFFFFFFFFFFFFFFF
        x ^= (x >> 27)
        self.state = x
        return ((x * 0x2545F4914F6CDD1D) & 0xFFFFFFFFFFFFFFFF) / 2.0**64

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self.random()

    def randint(self, low: int, high: int) -> int:
        return low + int(self.random() * (high - low + 1))


_FAKER = Faker()


def static_facts(fam: Family, serial: str) -> dict[str, Any]:
    """The facts a device of `fam` with this serial reports, the same on every call."""
    _FAKER.seed_instance(_seed(serial))
    release = _FAKER.date_between(start_date="-4y", end_date="-200d")
    return {
        "family": fam.name,
        "serial": serial,
        "manufacturer": fam.manufacturer,
        "product": fam.product,
        "bios_vendor": fam.bios_vendor,
        "bios_version": f"{fam.firmware_prefix}.{release:%Y.%m%d}.{_FAKER.random_int(1000, 9999)}",
        "bios_release_date": release.isoformat(),
        "cpu_id": fam.cpu,
        "os": fam.os_name,
        "arch": fam.arch,
        "total_memory": _FAKER.random_element(fam.memory_bytes),
        "disks": [{"name": n, "size": size, "ssd": ssd} for n, size, ssd in fam.disks],
        "mac": _FAKER.mac_address(),
        "hostname": f"{fam.name}-{serial.lower()}",
    }


def initial_firmware(fam: Family, serial: str) -> str:
    _FAKER.seed_instance(_seed(serial) ^ 0x5F5F)
    return f"{fam.firmware_prefix}-{_FAKER.random_int(1, 3)}.{_FAKER.random_int(0, 9)}.{_FAKER.random_int(0, 20)}"
