"""Flash drivers on real ext4 images (mkfs.ext4 -d, no root) and NXP's real uuu in -dry mode.

agent.env is read back with tools other than the writer (e2tools' e2cp, debugfs' cat), and the
partition tables are written here byte by byte, as a disk image builder would.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from harness.drivers.flash import (
    FlashError,
    ImageFlash,
    SimFlash,
    UuuFlash,
    find_root_fs,
    flash_from_spec,
    partitions,
    read_file,
    uuu_script,
)
from harness.lab.inventory import parse_lab

pytestmark = pytest.mark.skipif(not (shutil.which("mkfs.ext4") and shutil.which("debugfs")),
                                reason="e2fsprogs (mkfs.ext4, debugfs) not installed: `make sysdeps` as root")
needs_uuu = pytest.mark.skipif(shutil.which("uuu") is None, reason="uuu not installed: `make sysdeps` as root "
                               "(Debian package uuu)")
ENV_PATH = "/etc/fleetrig/agent.env"
MiB = 1024 * 1024
ENV_TEXT = b"SERIAL=DEV-0001\nTENANT_ID=acme\nBROKER_URL=mqtts://platform.example:8883\n"


def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "version").write_text("fleetrig-os 1.0\n")
    return root


def mkfs(image: Path, root: Path, *, offset: int = 0, size_mib: int = 4) -> None:
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", f"offset={offset}", "-d", str(root), str(image),
                    f"{size_mib}M"], check=True, capture_output=True)


def bare_image(tmp_path: Path) -> Path:
    image = tmp_path / "os.img"
    mkfs(image, rootfs(tmp_path))
    return image


def mbr_image(tmp_path: Path, kinds: tuple[int, int] = (0x0C, 0x83)) -> Path:
    """A disk image: partition 1 (1 MiB, FAT type, left blank) and partition 2 (4 MiB) with ext4."""
    image = tmp_path / "disk.img"
    table = bytearray(512)
    for i, (kind, start, count) in enumerate([(kinds[0], 2048, 2048), (kinds[1], 4096, 8192)]):
        struct.pack_into("<4xB3xII", table, 446 + 16 * i, kind, start, count)
    table[510:512] = b"\x55\xaa"
    with image.open("wb") as f:
        f.write(table)
        f.truncate((4096 + 8192) * 512)
    mkfs(image, rootfs(tmp_path), offset=4096 * 512)
    if kinds[0] == 0x83:
        mkfs(image, rootfs(tmp_path), offset=2048 * 512, size_mib=1)
    return image


def gpt_image(tmp_path: Path) -> Path:
    """A GPT disk image (protective MBR, header at LBA 1): partition 2 at LBA 4096 holds ext4."""
    image = tmp_path / "gpt.img"
    mbr = bytearray(512)
    struct.pack_into("<4xB3xII", mbr, 446, 0xEE, 1, 0xFFFFFFFF)
    mbr[510:512] = b"\x55\xaa"
    header = bytearray(512)
    header[:8] = b"EFI PART"
    struct.pack_into("<QII", header, 72, 2, 128, 128)
    entries = bytearray(128 * 128)
    for n, first in ((1, 2048), (2, 4096)):
        entry = 128 * (n - 1)
        entries[entry:entry + 16] = bytes([n]) * 16           # a non-zero type GUID
        struct.pack_into("<QQ", entries, entry + 32, first, first + 2047)
    with image.open("wb") as f:
        f.write(mbr + header + entries)
        f.truncate((4096 + 8192 + 34) * 512)
    mkfs(image, rootfs(tmp_path), offset=4096 * 512)
    return image


def agent_env(tmp_path: Path, data: bytes = ENV_TEXT, name: str = "agent.env") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def debugfs_cat(image: Path, offset: int, path: str) -> bytes:
    return subprocess.run(["debugfs", "-R", f"cat {path}", f"{image}?offset={offset}"], check=True,
                          capture_output=True).stdout


def test_a_bare_ext4_image_is_copied_with_agent_env_inside(tmp_path):
    source = bare_image(tmp_path)
    target = tmp_path / "dev" / "bench-1.img"
    ImageFlash("bench-1", target, env_path=ENV_PATH).flash(agent_env(tmp_path), source)
    assert debugfs_cat(target, 0, ENV_PATH) == ENV_TEXT
    assert debugfs_cat(target, 0, "/etc/version") == b"fleetrig-os 1.0\n"     # the rest is intact
    assert debugfs_cat(source, 0, ENV_PATH) == b""                            # the source is untouched
    with pytest.raises(FlashError, match=r"os.img: no /etc/fleetrig/agent.env in its file system: .*not found"):
        read_file(source, 0, ENV_PATH)
    stat = subprocess.run(["debugfs", "-R", f"stat {ENV_PATH}", str(target)], capture_output=True, text=True).stdout
    assert "Mode:  0600" in stat and "User:     0" in stat


@pytest.mark.skipif(shutil.which("e2cp") is None, reason="e2tools not installed: `make sysdeps` as root")
def test_e2tools_reads_back_what_was_written(tmp_path):
    target = tmp_path / "dev.img"
    ImageFlash("bench-1", target, env_path=ENV_PATH).flash(agent_env(tmp_path), bare_image(tmp_path))
    out = tmp_path / "read-back.env"
    subprocess.run(["e2cp", f"{target}:{ENV_PATH}", str(out)], check=True, capture_output=True)
    assert out.read_bytes() == ENV_TEXT


@pytest.mark.parametrize("build", [mbr_image, gpt_image], ids=["mbr", "gpt"])
def test_the_root_partition_of_a_whole_disk_image_is_found_and_written(tmp_path, build):
    source = build(tmp_path)
    assert [(p.number, p.offset, p.has_ext) for p in partitions(source)] == [(1, MiB, False), (2, 2 * MiB, True)]
    target = tmp_path / "dev.img"
    ImageFlash("bench-1", target, env_path=ENV_PATH).flash(agent_env(tmp_path), source)
    assert debugfs_cat(target, 2 * MiB, ENV_PATH) == ENV_TEXT
    with source.open("rb") as a, target.open("rb") as b:
        assert a.read(2 * MiB) == b.read(2 * MiB)       # table and first partition byte for byte


def test_a_reflash_replaces_the_old_agent_env(tmp_path):
    target = tmp_path / "dev.img"
    ImageFlash("bench-1", target, env_path=ENV_PATH).flash(agent_env(tmp_path), bare_image(tmp_path))
    again = tmp_path / "again.img"
    shutil.copyfile(target, again)
    second = agent_env(tmp_path, b"SERIAL=DEV-0002\n", "second.env")
    ImageFlash("bench-1", target, env_path=ENV_PATH).flash(second, again)
    assert debugfs_cat(target, 0, ENV_PATH) == b"SERIAL=DEV-0002\n"


def test_several_ext_partitions_need_the_root_one_named(tmp_path):
    source = mbr_image(tmp_path, kinds=(0x83, 0x83))
    with pytest.raises(FlashError, match=r"several ext partitions .*: name the root one with 'partition: N'"):
        find_root_fs(source)
    target = tmp_path / "dev.img"
    ImageFlash("bench-1", target, partition=1, env_path=ENV_PATH).flash(agent_env(tmp_path), source)
    assert debugfs_cat(target, MiB, ENV_PATH) == ENV_TEXT
    assert debugfs_cat(target, 2 * MiB, ENV_PATH) == b""


def test_bad_images_and_a_missing_agent_env_are_refused_and_leave_no_target(tmp_path):
    target = tmp_path / "dev.img"
    flash = ImageFlash("bench-1", target, env_path=ENV_PATH)
    env = agent_env(tmp_path)
    with pytest.raises(FlashError, match=r"nothere.img: no such image file"):
        flash.flash(env, tmp_path / "nothere.img")
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"\x00" * 4096 + b"not a file system" * 100)
    with pytest.raises(FlashError, match=r"junk.img: neither an ext2/3/4 file system nor a disk image with one"):
        flash.flash(env, junk)
    with pytest.raises(FlashError, match=r"absent.env: no such agent.env \(provision the device first"):
        flash.flash(tmp_path / "absent.env", bare_image(tmp_path))
    with pytest.raises(FlashError, match=r"empty.env: 0 bytes: not an agent.env"):
        flash.flash(agent_env(tmp_path, b"", "empty.env"), bare_image(tmp_path))
    disk = mbr_image(tmp_path)
    with pytest.raises(FlashError, match=r"has no partition 9 \(partitions: 1 at byte 1048576, 2 at byte 2097152 "):
        ImageFlash("bench-1", target, partition=9, env_path=ENV_PATH).flash(env, disk)
    with pytest.raises(FlashError, match=r"partition 1 holds no ext2/3/4 file system"):
        ImageFlash("bench-1", target, partition=1, env_path=ENV_PATH).flash(env, disk)
    with pytest.raises(FlashError, match=r"bench-1: no image to flash"):
        flash.flash(env)
    assert not target.exists()


def test_a_write_that_does_not_take_is_reported_and_the_half_image_removed(tmp_path):
    target = tmp_path / "dev.img"
    flash = ImageFlash("bench-1", target, env_path="/etc/version/agent.env")   # /etc/version is a file
    with pytest.raises(FlashError, match=r"writing /etc/version/agent.env into the file system at byte 0 "
                                         r"did not take: .*not a directory"):
        flash.flash(agent_env(tmp_path), bare_image(tmp_path))
    assert not target.exists()


def test_an_unsafe_path_inside_the_image_is_refused(tmp_path):
    for bad in ("etc/agent.env", "/etc/a b.env", "/etc/../agent.env", '/etc/"x'):
        with pytest.raises(FlashError, match="must be absolute"):
            ImageFlash("bench-1", tmp_path / "t.img", env_path=bad)


def test_the_uuu_script_boots_the_loader_and_writes_the_image(tmp_path):
    script = uuu_script(tmp_path / "flash.bin", tmp_path / "work" / "image.img", tmp_path / "work")
    lines = script.splitlines()
    assert lines[0].startswith("uuu_version ")
    assert "SDP: boot -f ../flash.bin -scanlimited 0x800000" in lines     # uuu opens files from the script's folder
    assert "FB: flash -raw2sparse all image.img" in lines
    assert lines[-1] == "FB: done"
    with pytest.raises(FlashError, match="uuu scripts split on spaces"):
        uuu_script(tmp_path / "my flash.bin", tmp_path / "image.img", tmp_path)


def uuu_flash(tmp_path: Path, **kwargs) -> UuuFlash:
    return UuuFlash("bench-imx8-1", tmp_path / "work", image=bare_image(tmp_path), env_path=ENV_PATH, **kwargs)


@needs_uuu
def test_uuu_dry_accepts_the_written_script_and_the_prepared_image_has_agent_env(tmp_path):
    bootloader = tmp_path / "flash.bin"
    bootloader.write_bytes(b"\xd1" * 1024)
    args = uuu_flash(tmp_path, bootloader=bootloader).check(agent_env(tmp_path))
    script = Path(args[0])
    assert script.read_text() == uuu_script(bootloader, tmp_path / "work" / "image.img", tmp_path / "work")
    assert debugfs_cat(tmp_path / "work" / "image.img", 0, ENV_PATH) == ENV_TEXT


@needs_uuu
def test_uuu_dry_checks_the_labs_own_script_with_the_image_as_its_parameter(tmp_path):
    (tmp_path / "flash.bin").write_bytes(b"\xd1" * 1024)
    own = tmp_path / "lab.uuu"
    own.write_text(f"uuu_version 1.4.149\n# @_image | the disk image\nSDP: boot -f {tmp_path}/flash.bin\n"
                   "FB: flash -raw2sparse all _image\nFB: done\n")
    args = uuu_flash(tmp_path, script=own).check(agent_env(tmp_path))
    assert args == ["-b", str(own), str(tmp_path / "work" / "image.img")]
    own.write_text("uuu_version 1.4.149\nFB: frobnicate all _image\n")
    with pytest.raises(FlashError, match=r"bench-imx8-1: uuu -dry: `uuu -dry -b .*` exited with 255: .*Unknown "):
        uuu_flash(tmp_path, script=own).check(agent_env(tmp_path))


@needs_uuu
def test_uuu_dry_refuses_a_script_whose_files_are_missing(tmp_path):
    own = tmp_path / "lab.uuu"
    own.write_text(f"uuu_version 1.4.149\nSDP: boot -f {tmp_path}/missing.bin\nFB: flash -raw2sparse all _image\n")
    with pytest.raises(FlashError, match=r"exited with 255: .*fail open file"):
        uuu_flash(tmp_path, script=own).check(agent_env(tmp_path))


@needs_uuu
def test_uuu_without_a_board_fails_with_the_timeout_named(tmp_path):
    bootloader = tmp_path / "flash.bin"
    bootloader.write_bytes(b"\xd1" * 1024)
    with pytest.raises(FlashError, match=r"bench-imx8-1: uuu \(is the board on USB and in serial download "
                                         r"mode\?\): `uuu .*flash.uuu` did not finish within 1 s"):
        uuu_flash(tmp_path, bootloader=bootloader, timeout=1.0).flash(agent_env(tmp_path))


def test_uuu_needs_exactly_one_of_a_boot_loader_or_a_script(tmp_path):
    with pytest.raises(FlashError, match="needs exactly one of 'bootloader'"):
        UuuFlash("bench-imx8-1", tmp_path, env_path=ENV_PATH)
    with pytest.raises(FlashError, match=r"boot loader .*nothere.bin: no such file"):
        uuu_flash(tmp_path, bootloader=tmp_path / "nothere.bin").prepare(agent_env(tmp_path))


def test_sim_flash_puts_agent_env_in_the_state_folder(tmp_path):
    state = tmp_path / "sims" / "sim-1"
    written = SimFlash("sim-1", state).flash(agent_env(tmp_path))
    assert written == state / "agent.env" and written.read_bytes() == ENV_TEXT
    assert [p.name for p in state.iterdir()] == ["agent.env"]      # no temporary file left
    with pytest.raises(FlashError, match=r"absent.env: no such agent.env"):
        SimFlash("sim-1", state).flash(tmp_path / "absent.env")


def test_flash_from_a_lab_entry_writes_the_named_target(tmp_path):
    source = bare_image(tmp_path)
    lab = parse_lab(f"devices:\n  q: {{kind: qemu, board: imx6ul, flash: {{driver: image, image: {source}, "
                    "target: disks/q.img}}\n  s: {kind: sim, family: photon, flash: {driver: sim}}\n",
                    tmp_path / "lab.yaml")
    spec = lab.device("q").flash
    assert spec is not None
    flash_from_spec("q", spec, workdir=tmp_path / "work").flash(agent_env(tmp_path))
    assert debugfs_cat(tmp_path / "disks" / "q.img", 0, ENV_PATH) == ENV_TEXT
    sim = lab.device("s").flash
    assert sim is not None
    assert isinstance(flash_from_spec("s", sim, workdir=tmp_path / "s"), SimFlash)
