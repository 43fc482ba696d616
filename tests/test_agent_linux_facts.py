"""LinuxHardware's readers on made-up system trees: an x86 PC (DMI), an ARM board (device tree
and U-Boot through fw_printenv), and a device that lacks docker, mender, apt or a firmware tool.

The trees are real directories shaped like /proc and /sys; the tools are real executables put on
PATH for the test (a fw_printenv script), so nothing here imitates the agent's own code.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from agent.hardware import FirmwareInfo, HardwareError
from agent.linux import LinuxHardware
from agent.linux.apt import NO_APT, NO_MENDER, AptPackageManager
from agent.linux.docker import NO_RUNTIME, DockerRuntime
from agent.linux.power import PowerControl, default_command

MEMINFO = "MemTotal:        2048000 kB\nMemFree:          100000 kB\nMemAvailable:    1024000 kB\n"


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def bare_path(tmp_path, monkeypatch) -> Path:
    """PATH with only a directory of the test's own tools (and none of docker, apt, mender)."""
    tools = tmp_path / "bin"
    tools.mkdir()
    monkeypatch.setenv("PATH", str(tools))
    return tools


def tool(directory: Path, name: str, script: str) -> None:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


def test_x86_facts_and_firmware_come_from_dmi(tmp_path, bare_path):
    root = tree(tmp_path / "pc", {
        "sys/class/dmi/id/bios_vendor": "American Megatrends Inc.\n",
        "sys/class/dmi/id/bios_version": "5.27\n",
        "sys/class/dmi/id/bios_date": "03/14/2023\n",
        "sys/class/dmi/id/sys_vendor": "Intel Corporation\n",
        "sys/class/dmi/id/product_name": "NUC13ANHi7\n",
        "proc/meminfo": MEMINFO,
        "proc/cpuinfo": "processor\t: 0\nmodel name\t: 13th Gen Intel(R) Core(TM) i7-1360P\n",
        "sys/block/nvme0n1/size": "1000215216\n",
        "sys/block/nvme0n1/queue/rotational": "0\n",
        "sys/block/loop0/size": "8\n",
        "etc/os-release": 'PRETTY_NAME="Ubuntu 22.04.4 LTS"\nVERSION_ID="22.04"\n',
        "proc/stat": "cpu  100 0 100 800 0 0 0 0 0 0\n",
        "sys/class/thermal/thermal_zone0/temp": "47000\n",
        "sys/class/thermal/thermal_zone1/temp": "52500\n",
        "proc/net/dev": "Inter-|\n face |\n    lo: 1 0 0 0 0 0 0 0 1 0\n  eth0: 1234 5 0 0 0 0 0 0 5678 9\n",
    })
    hw = LinuxHardware(root)
    assert hw.firmware_info() == FirmwareInfo("American Megatrends Inc.", "5.27", dt.date(2023, 3, 14),
                                              "Intel Corporation", "NUC13ANHi7")
    facts = hw.facts()
    assert (facts["manufacturer"], facts["product"], facts["bios_release_date"]) == (
        "Intel Corporation", "NUC13ANHi7", "2023-03-14")
    assert facts["cpu_id"] == "13th Gen Intel(R) Core(TM) i7-1360P" and facts["os"] == "Ubuntu 22.04.4 LTS"
    assert facts["total_memory"] == 2048000 * 1024 and facts["rootfs"] == "22.04"
    assert facts["disks"] == [{"name": "nvme0n1", "size": 1000215216 * 512, "ssd": True}]
    assert hw.firmware_version() == "5.27"
    reading = hw.resources()
    assert (reading.total_memory_mb, reading.free_memory_mb) == (2000, 1000)
    assert reading.core_temp_c == 52.5 and reading.battery_percent is None
    assert reading.cpu_percent == 20.0  # busy 200 of 1000 jiffies since boot
    assert reading.network == {"eth0": {"rx_bytes": 1234, "tx_bytes": 5678}}


def test_arm_board_identity_comes_from_the_device_tree_and_u_boot(tmp_path, bare_path):
    root = tree(tmp_path / "board", {
        "proc/device-tree/model": "NXP i.MX8MPlus EVK board\x00",
        "proc/meminfo": MEMINFO,
        "proc/cpuinfo": "processor\t: 0\nBogoMIPS\t: 16.00\nHardware\t: NXP i.MX8MP\n",
        "sys/class/power_supply/bat0/type": "Battery\n",
        "sys/class/power_supply/bat0/capacity": "87\n",
    })
    uboot = "U-Boot 2023.04-imx (Aug 02 2023 - 10:11:12 +0000)"
    tool(bare_path, "fw_printenv", f'test "$1 $2" = "-n ver" && echo "{uboot}"')
    hw = LinuxHardware(root)
    assert hw.firmware_info() == FirmwareInfo("U-Boot", "U-Boot 2023.04-imx", dt.date(2023, 8, 2), "NXP",
                                              "NXP i.MX8MPlus EVK board")
    facts = hw.facts()
    assert facts["model"] == "NXP i.MX8MPlus EVK board" and facts["cpu_id"] == "NXP i.MX8MP"
    assert hw.firmware_version() == "U-Boot 2023.04-imx"
    assert hw.resources().battery_percent == 87


def test_a_board_without_fw_printenv_still_answers(tmp_path, bare_path):
    root = tree(tmp_path / "board", {"proc/device-tree/model": "Raspberry Pi 4 Model B Rev 1.4\x00",
                                     "etc/fleetrig/firmware-version": "rpi-fw-7.1\n"})
    info = LinuxHardware(root).firmware_info()
    assert (info.vendor, info.version, info.product) == ("unknown", "rpi-fw-7.1", "Raspberry Pi 4 Model B Rev 1.4")
    assert info.release_date == dt.date(1970, 1, 1)


def test_missing_capabilities_answer_with_a_status_and_a_sentence(tmp_path, bare_path):
    runtime = DockerRuntime()
    for call in (runtime.images, runtime.containers, runtime.compose_list,
                 lambda: runtime.image_pull("alpine:3.20"), lambda: runtime.compose_down("stack")):
        with pytest.raises(HardwareError) as info:
            call()
        assert info.value.status == 400 and str(info.value) == NO_RUNTIME
    assert runtime.stats() == []  # telemetry reads it on its own: nothing runs
    apt = AptPackageManager(tmp_path)
    with pytest.raises(HardwareError, match=re.escape(NO_APT)):
        apt.update("full")
    artifact = tmp_path / "rootfs-2.mender"
    artifact.write_bytes(b"x")
    with pytest.raises(HardwareError, match=re.escape(NO_MENDER)):
        apt.install_mender(artifact)
    assert apt.installed() == {}
    image = tmp_path / "fw.bin"
    image.write_bytes(b"\x7f")
    hw = LinuxHardware(tmp_path)
    with pytest.raises(HardwareError, match="no firmware updater configured"):
        hw.stage_firmware(image, hw.firmware_info())


def test_a_failing_tool_is_reported_by_name_with_its_error_line(tmp_path, bare_path):
    tool(bare_path, "docker", 'echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock." >&2; exit 1')
    with pytest.raises(HardwareError) as info:
        DockerRuntime().image_pull("alpine:3.20")
    assert str(info.value) == ("AOTA pull: docker exited with 1: Cannot connect to the Docker daemon at "
                               "unix:///var/run/docker.sock.")
    written = tmp_path / "written"
    tool(bare_path, "flash-fw", f'echo "$1 $2" > {written}')
    hw = LinuxHardware(tmp_path, firmware_command="flash-fw {image} {version}")
    image = tmp_path / "fw.bin"
    image.write_bytes(b"\x7f")
    hw.stage_firmware(image, FirmwareInfo("v", "9.9", dt.date(2030, 1, 1), "m", "p"))
    assert written.read_text().split() == [str(image), "9.9"]


def test_apt_sources_are_files_under_the_root(tmp_path):
    apt = AptPackageManager(tmp_path)
    apt.add_source("sources.list", ["deb http://deb.example/debian bookworm main"])
    apt.add_source("fleet.list", ["deb https://repo.example/fleet stable main"])
    assert apt.sources() == {"sources.list": ["deb http://deb.example/debian bookworm main"],
                             "fleet.list": ["deb https://repo.example/fleet stable main"]}
    written = (tmp_path / "etc/apt/sources.list.d/fleet.list").read_text()
    assert written == "deb https://repo.example/fleet stable main\n"
    for bad in ("../etc/passwd", "fleet.conf", ".hidden.list"):
        with pytest.raises(HardwareError, match="invalid apt source file name"):
            apt.add_source(bad, ["deb x y"])
    with pytest.raises(HardwareError, match="line break"):
        apt.add_source("two.list", ["deb a b\ndeb c d"])
    apt.remove_source("fleet.list")
    with pytest.raises(HardwareError, match=r"no apt source file fleet\.list"):
        apt.remove_source("fleet.list")
    assert list(apt.sources()) == ["sources.list"]


def test_power_runs_the_configured_command_then_tells_the_agent(tmp_path, bare_path):
    marks = tmp_path / "marks"
    power = PowerControl(reboot=f"/bin/sh -c 'echo reboot >> {marks}'", shutdown="/bin/false")
    heard: list[str] = []
    power.on_power = heard.append
    power.act("reboot")
    assert marks.read_text() == "reboot\n" and heard == ["reboot"]
    with pytest.raises(HardwareError, match="shutdown: /bin/false exited with 1"):
        power.act("shutdown")
    assert heard == ["reboot"]  # a failed command does not stop the agent
    systemd = tmp_path / "systemd-root"
    (systemd / "run/systemd/system").mkdir(parents=True)
    tool(bare_path, "systemctl", "exit 0")
    assert default_command("reboot", systemd) == ["systemctl", "reboot"]
    assert default_command("shutdown", tmp_path) == ["poweroff"]
    with pytest.raises(ValueError, match="the reboot command is empty"):
        PowerControl(reboot="   ")


