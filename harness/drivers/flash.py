"""Flash: put an image on a device and its agent.env into the image's root file system.

Three drivers, one step they share:

* `ImageFlash` copies a disk image to the file a device boots from (a QEMU disk, the file an SD
  card is written from) and writes agent.env into it.
* `UuuFlash` prepares the same copy, then has NXP's `uuu` write it to an i.MX board over USB:
  either with a script the harness writes (`bootloader:` in lab.yaml, the shape of uuu's own
  built-in `emmc_all` script) or with the lab's own script, which takes the image as its `_image`
  parameter (`uuu -b SCRIPT IMAGE`, `script:` in lab.yaml). `uuu -dry` checks a script and the
  files it names without a board (uuu 1.4.193, Debian 12: it exits 255 with "Unknown Command"
  or "fail open file"), so the script is checked before anything is sent.
* `SimFlash` writes agent.env into a simulated device's state folder.

Writing agent.env needs no root and no loop device: e2fsprogs' `debugfs -w` edits an ext2/3/4
file system inside a file, and its unix I/O manager takes `IMAGE?offset=BYTES`, so a partition
of a whole-disk image is reached without cutting it out (e2tools' `e2cp` takes only a bare file
system). The partition is found here from the MBR or GPT (sfdisk is not in every image-building
container); logical partitions inside an MBR extended partition are not looked into. debugfs
exits 0 even when a command fails, so the written file is read back and compared.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from harness.drivers.command import CommandError, run, tail

SECTOR = 512
EXT_MAGIC = 0xEF53
#: Byte offset of s_magic: the superblock starts 1024 bytes into the file system, magic at +56.
EXT_MAGIC_AT = 1024 + 56
MBR_GPT_PROTECTIVE = 0xEE
MBR_EXTENDED = (0x05, 0x0F, 0x85)
MAX_GPT_ENTRIES = 128
#: agent.env is small (agent.env caps it at 64 KiB); anything bigger is the wrong file.
MAX_ENV_BYTES = 64 * 1024
DEBUGFS_TIMEOUT = 60.0
UUU_DRY_TIMEOUT = 60.0
#: A path inside the image that debugfs takes without quoting.
_FS_PATH = re.compile(r"/[A-Za-z0-9._/-]+")
#: The uuu script format this writes (uuu's own built-in scripts declare this version).
UUU_SCRIPT_VERSION = "1.4.149"


class FlashError(CommandError):
    """An image could not be written or prepared; the message names the device, the file and why."""


@dataclass(frozen=True)
class Partition:
    number: int     # 1-based, as Linux names them (mmcblk0p2)
    offset: int     # bytes from the start of the disk image
    has_ext: bool


def _read_at(f: BinaryIO, offset: int, size: int) -> bytes:
    f.seek(offset)
    return f.read(size)


def _is_ext(f: BinaryIO, offset: int) -> bool:
    raw = _read_at(f, offset + EXT_MAGIC_AT, 2)
    return len(raw) == 2 and struct.unpack("<H", raw)[0] == EXT_MAGIC


def partitions(image: Path) -> list[Partition]:
    """The primary MBR or GPT partitions of a disk image (empty for a bare file system or no table)."""
    with image.open("rb") as f:
        mbr = _read_at(f, 0, SECTOR)
        if len(mbr) < SECTOR or mbr[510:512] != b"\x55\xaa":
            return []
        entries = [struct.unpack_from("<4xB3xII", mbr, 446 + 16 * i) for i in range(4)]
        if any(kind == MBR_GPT_PROTECTIVE for kind, _, _ in entries):
            return _gpt(f)
        return [Partition(n, start * SECTOR, _is_ext(f, start * SECTOR))
                for n, (kind, start, count) in enumerate(entries, 1)
                if kind and count and kind not in MBR_EXTENDED]


def _gpt(f: BinaryIO) -> list[Partition]:
    header = _read_at(f, SECTOR, 92)
    if len(header) < 92 or header[:8] != b"EFI PART":
        return []
    entries_lba, count, size = struct.unpack_from("<QII", header, 72)
    if size < 128 or count > MAX_GPT_ENTRIES:
        return []
    table = _read_at(f, entries_lba * SECTOR, count * size)
    found = []
    for n in range(1, len(table) // size + 1):
        entry = table[(n - 1) * size:n * size]
        if entry[:16] == bytes(16):
            continue
        first = struct.unpack_from("<Q", entry, 32)[0]
        found.append(Partition(n, first * SECTOR, _is_ext(f, first * SECTOR)))
    return found


def find_root_fs(image: Path, partition: int | None = None) -> int:
    """Byte offset of the ext2/3/4 file system agent.env goes into; refused with the reason."""
    if not image.is_file():
        raise FlashError(f"{image}: no such image file")
    with image.open("rb") as f:
        bare = _is_ext(f, 0)
    if bare and partition is None:
        return 0
    parts = partitions(image)
    listing = ", ".join(f"{p.number} at byte {p.offset}{' (ext)' if p.has_ext else ''}" for p in parts) or "none"
    if partition is not None:
        chosen = [p for p in parts if p.number == partition]
        if not chosen:
            raise FlashError(f"{image}: has no partition {partition} (partitions: {listing})")
        if not chosen[0].has_ext:
            raise FlashError(f"{image}: partition {partition} holds no ext2/3/4 file system (partitions: {listing})")
        return chosen[0].offset
    ext = [p for p in parts if p.has_ext]
    if not ext:
        raise FlashError(f"{image}: neither an ext2/3/4 file system nor a disk image with one "
                         f"(partitions: {listing})")
    if len(ext) > 1:
        raise FlashError(f"{image}: several ext partitions ({listing}): name the root one with "
                         "'partition: N' under the device's flash in lab.yaml")
    return ext[0].offset


def _env_bytes(agent_env: Path) -> bytes:
    if not agent_env.is_file():
        raise FlashError(f"{agent_env}: no such agent.env (provision the device first: `fleetrig pms provision`)")
    data = agent_env.read_bytes()
    if not data.strip() or len(data) > MAX_ENV_BYTES:
        raise FlashError(f"{agent_env}: {len(data)} bytes: not an agent.env (empty or over {MAX_ENV_BYTES})")
    return data


def _check_fs_path(path: str) -> str:
    if not _FS_PATH.fullmatch(path) or "/../" in path + "/" or "//" in path:
        raise FlashError(f"agent.env path {path[:80]!r} in the image must be absolute, of letters, digits "
                         "and ._-/ only")
    return path


def _debugfs(spec: str, *, write: bool, commands: list[str]) -> str:
    argv = ["debugfs", *(["-w"] if write else []), "-f", "-", spec]
    done = run(argv, timeout=DEBUGFS_TIMEOUT, what=f"debugfs on {spec}", error=FlashError,
               stdin="\n".join(commands) + "\n")
    return done.stderr


def _fs_spec(image: Path, offset: int) -> str:
    """debugfs' name for the file system at `offset` bytes into `image` (its unix I/O manager's option)."""
    if "?" in str(image):
        raise FlashError(f"{image}: debugfs reads '?' in a file name as the start of its options; rename it")
    return f"{image}?offset={offset}"


def read_file(image: Path, offset: int, path: str) -> bytes:
    """The bytes of `path` in the ext file system at `offset` of `image` (FlashError when absent)."""
    spec = _fs_spec(image, offset)
    with tempfile.TemporaryDirectory(prefix="fleetrig-flash-") as tmp:
        out = Path(tmp) / "out"
        said = _debugfs(spec, write=False, commands=[f"dump {_check_fs_path(path)} {out}"])
        if not out.is_file():
            raise FlashError(f"{image}: no {path} in its file system: {tail(said) or 'debugfs said nothing'}")
        return out.read_bytes()


def place_file(image: Path, data: bytes, path: str, *, partition: int | None = None) -> None:
    """Write `data` as `path` (mode 0600, owner root) into the image's ext root file system."""
    path = _check_fs_path(path)
    offset = find_root_fs(image, partition)
    spec = _fs_spec(image, offset)
    parents = [str(Path(*Path(path).parts[:i])) for i in range(2, len(Path(path).parts))]
    with tempfile.TemporaryDirectory(prefix="fleetrig-flash-") as tmp:
        local = Path(tmp) / "file"
        local.write_bytes(data)
        # mkdir of an existing folder and rm of an absent file complain and go on: both are fine.
        said = _debugfs(spec, write=True, commands=[
            *(f"mkdir {p}" for p in parents), f"rm {path}", f"write {local} {path}",
            f"sif {path} mode 0100600", f"sif {path} uid 0", f"sif {path} gid 0"])
    try:
        back = read_file(image, offset, path)
    except FlashError:
        back = None
    if back != data:
        raise FlashError(f"{image}: writing {path} into the file system at byte {offset} did not take: "
                         f"{tail(said) or 'debugfs said nothing'}")


def _replace(target: Path, fill: Callable[[str], None]) -> None:
    """Write `target` through a temporary file beside it, so a half write never has its name."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        fill(tmp)
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise FlashError(f"{target}: cannot write: {exc.strerror or exc}") from None


def copy_image(image: Path, target: Path) -> None:
    """Copy `image` to `target` (a half copy never has the target's name)."""
    if not image.is_file():
        raise FlashError(f"{image}: no such image file")
    if target.exists() and image.resolve() == target.resolve():
        raise FlashError(f"{target}: the flash target is the source image itself; give another target")
    _replace(target, lambda tmp: shutil.copyfile(image, tmp))


class ImageFlash:
    """Flash = copy the disk image to the device's image file, agent.env inside it."""

    def __init__(self, device: str, target: Path, *, image: Path | None = None, partition: int | None = None,
                 env_path: str) -> None:
        self.device, self.target, self.image = device, target, image
        self.partition, self.env_path = partition, _check_fs_path(env_path)

    def flash(self, agent_env: Path, image: Path | None = None) -> Path:
        source = image or self.image
        if source is None:
            raise FlashError(f"{self.device}: no image to flash (give one, or 'image:' under flash in lab.yaml)")
        data = _env_bytes(agent_env)
        find_root_fs(source, self.partition)     # refuse a wrong image before copying it
        copy_image(source, self.target)
        try:
            place_file(self.target, data, self.env_path, partition=self.partition)
        except FlashError:
            self.target.unlink(missing_ok=True)  # no half-flashed image that would boot without identity
            raise
        return self.target


def _uuu_path(path: Path, relative_to: Path | None = None) -> str:
    text = str(path.resolve()) if relative_to is None else os.path.relpath(path.resolve(), relative_to.resolve())
    if any(c.isspace() for c in text):
        raise FlashError(f"{text[:80]!r}: uuu scripts split on spaces; move it to a path without any")
    return text


def uuu_script(bootloader: Path, image: Path, folder: Path) -> str:
    """A uuu script, to be saved in `folder`, that boots `bootloader` over USB and writes `image`
    to eMMC (the shape of uuu's built-in emmc_all script).

    uuu runs the lines of the protocols the board speaks and skips the others: SDP for
    i.MX6/7/8MM/8MQ, SDPS for i.MX8QXP/QM, SDPV when an SPL loads U-Boot. `${emmc_dev}` is
    U-Boot's variable, expanded on the board. uuu opens a script's files from the script's own
    folder, even a path that starts with '/' (uuu 1.4.193), so the paths are relative to it.
    """
    boot, img = _uuu_path(bootloader, folder), _uuu_path(image, folder)
    return "\n".join([
        f"uuu_version {UUU_SCRIPT_VERSION}",
        f"# written by fleetrig: {Path(img).name} to eMMC",
        f"SDP: boot -f {boot} -scanlimited 0x800000",
        f"SDPS: boot -scanterm -f {boot} -scanlimited 0x800000",
        "SDPV: delay 1000",
        f"SDPV: write -f {boot} -skipspl -scanterm -scanlimited 0x800000",
        "SDPV: jump -scanlimited 0x800000",
        "FB: ucmd setenv fastboot_dev mmc",
        "FB: ucmd setenv mmcdev ${emmc_dev}",
        "FB: ucmd mmc dev ${emmc_dev}",
        f"FB: flash -raw2sparse all {img}",
        "FB: done",
        "",
    ])


class UuuFlash:
    """Flash an i.MX board over USB with NXP's uuu; agent.env is placed in the image first."""

    def __init__(self, device: str, workdir: Path, *, bootloader: Path | None = None, script: Path | None = None,
                 image: Path | None = None, partition: int | None = None, env_path: str,
                 timeout: float = 600.0) -> None:
        if (bootloader is None) == (script is None):
            raise FlashError(f"{device}: flash driver 'uuu' needs exactly one of 'bootloader' (the harness "
                             "writes the script) or 'script' (the lab's own, taking _image)")
        self.device, self.workdir, self.image = device, workdir, image
        self.bootloader, self.script, self.timeout = bootloader, script, timeout
        self.image_flash = ImageFlash(device, workdir / "image.img", image=image, partition=partition,
                                      env_path=env_path)

    def prepare(self, agent_env: Path, image: Path | None = None) -> list[str]:
        """Copy the image with agent.env into the work folder; the uuu arguments that flash it."""
        if self.bootloader is not None and not self.bootloader.is_file():
            raise FlashError(f"{self.device}: boot loader {self.bootloader}: no such file")
        if self.script is not None and not self.script.is_file():
            raise FlashError(f"{self.device}: uuu script {self.script}: no such file")
        prepared = self.image_flash.flash(agent_env, image)
        if self.script is not None:
            return ["-b", _uuu_path(self.script), _uuu_path(prepared)]
        assert self.bootloader is not None
        script = self.workdir / "flash.uuu"
        script.write_text(uuu_script(self.bootloader, prepared, script.parent))
        return [_uuu_path(script)]

    def check(self, agent_env: Path, image: Path | None = None) -> list[str]:
        """Prepare and have `uuu -dry` check the script and its files (no board needed)."""
        args = self.prepare(agent_env, image)
        run(["uuu", "-dry", *args], timeout=UUU_DRY_TIMEOUT, what=f"{self.device}: uuu -dry", error=FlashError)
        return args

    def flash(self, agent_env: Path, image: Path | None = None) -> None:
        """Check, then flash for real (the board must be in USB serial download mode)."""
        args = self.check(agent_env, image)
        run(["uuu", *args], timeout=self.timeout, error=FlashError,
            what=f"{self.device}: uuu (is the board on USB and in serial download mode?)")


class SimFlash:
    """Flash of a simulated device: its agent.env lands in the device's state folder."""

    def __init__(self, device: str, state_dir: Path) -> None:
        self.device, self.state_dir = device, state_dir

    def flash(self, agent_env: Path, image: Path | None = None) -> Path:
        data = _env_bytes(agent_env)
        target = self.state_dir / "agent.env"
        _replace(target, lambda tmp: Path(tmp).write_bytes(data))
        return target


class Flash(Protocol):
    def flash(self, agent_env: Path, image: Path | None = None) -> object: ...


class FlashFields(Protocol):
    """What a flash driver is built from: harness.lab's FlashSpec has these fields."""

    driver: str
    image: Path | None
    bootloader: Path | None
    script: Path | None
    target: Path | None
    partition: int | None
    env_path: str
    timeout: float


def flash_from_spec(device: str, spec: FlashFields, *, workdir: Path) -> Flash:
    """The flash driver a lab entry names; `workdir` holds uuu's prepared image, or a sim's state."""
    if spec.driver == "image":
        if spec.target is None:
            raise FlashError(f"{device}: flash driver 'image' needs a 'target' (the disk image file to write)")
        return ImageFlash(device, spec.target, image=spec.image, partition=spec.partition, env_path=spec.env_path)
    if spec.driver == "uuu":
        return UuuFlash(device, workdir, bootloader=spec.bootloader, script=spec.script, image=spec.image,
                        partition=spec.partition, env_path=spec.env_path, timeout=spec.timeout)
    if spec.driver == "sim":
        return SimFlash(device, workdir)
    raise FlashError(f"{device}: unknown flash driver {spec.driver!r} (known: image, uuu, sim)")
