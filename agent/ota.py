"""The update commands on the device: AOTA, FOTA, SOTA, POTA and package sources.

Each function takes a parsed manifest command and the device's parts, does the work through
the Hardware interface, and returns an `Outcome`: the result message, data for the cloud, and
whether the device must reboot afterwards. Refusals raise HardwareError with the seed's status
(400 install failure, 401 image already present, 404 file not found). Nothing is changed
before every check that can refuse has passed.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from agent import packages
from agent.config import AgentConfig
from agent.hardware import FirmwareInfo, Hardware, HardwareError
from agent.manifest import AotaCommand, FotaCommand, PotaCommand, SotaCommand, SourceCommand
from agent.wire import ResultCode

Notify = Callable[[str, str], Awaitable[None]]
T = TypeVar("T")


@dataclass
class Outcome:
    message: str
    data: Any = None
    reboot: bool = False
    events: list[str] = field(default_factory=list)


@dataclass
class Context:
    """What the update commands need besides the command itself."""

    hardware: Hardware
    config: AgentConfig
    work_dir: Path
    ca_pem: str | None
    signature_cert: str | None
    repo_url: str | None
    notify: Notify

    def trusted(self) -> list[str]:
        return [*self.config.list("trustedRepositories"), *([self.repo_url] if self.repo_url else [])]

    async def fetch(self, url: str, username: str | None, password: str | None, subdir: str) -> Path:
        packages.check_trusted(url, self.trusted())
        await self.notify("ota.downloading", f"downloading {url}")
        return await asyncio.to_thread(packages.download, url, self.work_dir / subdir, ca_pem=self.ca_pem,
                                       username=username, password=password)

    async def verify(self, path: Path, signature: str | None, sigversion: int | None) -> None:
        await asyncio.to_thread(packages.verify_signature, path, signature, self.signature_cert,
                                str(sigversion or 384))


async def _installing(ctx: Context) -> None:
    """Let the install take the time the hardware models (simulated devices; 0 elsewhere)."""
    seconds = float(getattr(ctx.hardware, "install_seconds", 0) or 0)
    if seconds > 0:
        await asyncio.sleep(seconds)


async def _blocking(function: Callable[..., T], *args: Any) -> T:
    """Run a hardware operation off the event loop: on a real device it is apt, docker or a
    firmware tool, which take minutes, and the connection's keepalive must go on meanwhile."""
    return await asyncio.to_thread(function, *args)


def _need(value: str | None, what: str, command: str) -> str:
    if not value:
        raise HardwareError(ResultCode.INSTALL_FAILURE, f"{command}: {what} is required")
    return value


def _reference(tag: str, version: Any) -> str:
    return f"{tag}:{version}" if version is not None and ":" not in tag.rsplit("/", 1)[-1] else tag


def _package_folder(root: Path, members: list[str], tag: str, archive: str) -> Path:
    """The seed's layout: the archive holds a folder named like the container tag."""
    tops = {m.split("/", 1)[0] for m in members if m}
    if tag not in tops:
        found = ", ".join(sorted(tops))
        raise HardwareError(ResultCode.INSTALL_FAILURE,
                            f"package {archive} must hold a folder named {tag!r} (found: {found})")
    return root / tag


# -- AOTA -----------------------------------------------------------------------------------------


async def aota(cmd: AotaCommand, ctx: Context) -> Outcome:
    rt = ctx.hardware.containers
    what = f"AOTA {cmd.app} {cmd.cmd}"
    tag = cmd.container_tag
    if cmd.app == "compose":
        if cmd.cmd == "list":
            return Outcome("docker-compose stacks listed", data={"stacks": await _blocking(rt.compose_list)})
        tag = _need(tag, "containerTag", what)
        if cmd.cmd in ("up", "pull"):
            archive = await ctx.fetch(_need(cmd.fetch, "fetch", what), cmd.username, cmd.password, "aota")
            await ctx.verify(archive, cmd.signature, cmd.sigversion)
            if not archive.name.endswith((".tar.gz", ".tgz", ".tar")):
                raise HardwareError(ResultCode.INSTALL_FAILURE,
                                    f"{what}: package {archive.name} is not a tar.gz archive")
            unpacked = ctx.work_dir / "aota" / f"{tag}.unpacked"
            members = await asyncio.to_thread(packages.safe_extract, archive, unpacked)
            folder = _package_folder(unpacked, members, tag, archive.name)
            file = cmd.file or "docker-compose.yml"
            if cmd.cmd == "up":
                started = await _blocking(rt.compose_up, tag, folder, file)
                return Outcome(f"docker-compose {tag} is up", data={"containers": started})
            pulled = await _blocking(rt.compose_pull, tag, folder, file)
            return Outcome(f"docker-compose {tag} images pulled", data={"images": pulled})
        if cmd.cmd == "down":
            await _blocking(rt.compose_down, tag)
            return Outcome(f"docker-compose {tag} is down")
        if cmd.cmd == "remove":
            await _blocking(rt.compose_remove, tag)
            return Outcome(f"docker-compose {tag} removed")
        raise HardwareError(ResultCode.INSTALL_FAILURE,
                            f"{what} is not supported (docker-compose: up, down, pull, list, remove)")
    if cmd.cmd == "stats":
        return Outcome("container stats", data={"containers": await _blocking(rt.stats)})
    if cmd.cmd == "list":
        return Outcome("containers listed", data={"images": await _blocking(rt.images),
                                                  "containers": await _blocking(rt.containers)})
    tag = _need(tag, "containerTag", what)
    reference = _reference(tag, cmd.version)
    if cmd.cmd in ("import", "load"):
        archive = await ctx.fetch(_need(cmd.fetch, "fetch", what), cmd.username, cmd.password, "aota")
        await ctx.verify(archive, cmd.signature, cmd.sigversion)
        if not archive.name.endswith((".tar.gz", ".tgz")):
            raise HardwareError(ResultCode.INSTALL_FAILURE, f"{what}: package {archive.name} must be a tar.gz")
        unpacked = ctx.work_dir / "aota" / f"{tag}.unpacked"
        members = await asyncio.to_thread(packages.safe_extract, archive, unpacked)
        _package_folder(unpacked, members, archive.name.split(".", 1)[0], archive.name)
        if cmd.cmd == "import":
            return Outcome(f"image {await _blocking(rt.image_import, archive, reference)} imported")
        return Outcome(f"images loaded: {', '.join(await _blocking(rt.image_load, archive))}")
    if cmd.cmd == "pull":
        return Outcome(f"image {await _blocking(rt.image_pull, reference)} pulled")
    if cmd.cmd == "remove":
        await _blocking(rt.image_remove, reference)
        return Outcome(f"image {reference} removed")
    raise HardwareError(ResultCode.INSTALL_FAILURE,
                        f"{what} is not supported (docker: import, load, pull, remove, stats)")


# -- FOTA -----------------------------------------------------------------------------------------


def _check_platform(cmd: FotaCommand, running: FirmwareInfo) -> None:
    """Vendor, manufacturer and product must match, and the release date be newer: all named."""
    problems = [
        f"{name} {wanted!r} does not match the platform's {actual!r}"
        for name, wanted, actual in (("vendor", cmd.vendor, running.vendor),
                                     ("manufacturer", cmd.manufacturer, running.manufacturer),
                                     ("product", cmd.product, running.product))
        if wanted.strip() != actual
    ]
    if cmd.releasedate <= running.release_date:
        problems.append(f"release date {cmd.releasedate} is not newer than the running firmware's "
                        f"{running.release_date}")
    if problems:
        raise HardwareError(ResultCode.INSTALL_FAILURE, "FOTA: " + "; ".join(problems))


async def fota(cmd: FotaCommand, ctx: Context, *, stage_only: bool = False) -> Outcome:
    running = ctx.hardware.firmware_info()
    _check_platform(cmd, running)
    package = await ctx.fetch(_need(cmd.fetch, "fetch", "FOTA"), cmd.username, cmd.password, "fota")
    await ctx.verify(package, cmd.signature, cmd.sigversion)
    image = package
    if package.name.endswith((".tar", ".tar.gz", ".tgz")):
        unpacked = ctx.work_dir / "fota" / "unpacked"
        members = await asyncio.to_thread(packages.safe_extract, package, unpacked)
        binaries = [m for m in members if m.endswith((".bin", ".cap", ".fd", ".img"))]
        if len(binaries) != 1:
            raise HardwareError(ResultCode.INSTALL_FAILURE,
                                f"FOTA: package {package.name} must hold exactly one firmware binary, "
                                     f"found {len(binaries)}")
        image = unpacked / binaries[0]
    target = FirmwareInfo(vendor=running.vendor, version=cmd.biosversion, release_date=cmd.releasedate,
                          manufacturer=running.manufacturer, product=running.product)
    await ctx.notify("ota.installing", f"writing firmware {cmd.biosversion}")
    await _installing(ctx)
    await _blocking(ctx.hardware.stage_firmware, image, target)
    shutil.rmtree(ctx.work_dir / "fota", ignore_errors=True)
    reboot = stage_only is False and (cmd.device_reboot or "yes").lower() not in ("no", "n", "false")
    return Outcome(f"firmware {cmd.biosversion} written; it runs after the reboot", reboot=reboot)


# -- SOTA -----------------------------------------------------------------------------------------


async def sota(cmd: SotaCommand, ctx: Context) -> Outcome:
    pm = ctx.hardware.packages
    if cmd.cmd != "update":
        raise HardwareError(ResultCode.INSTALL_FAILURE, f"SOTA command {cmd.cmd!r} is not supported (update)")
    if cmd.fetch:
        artifact = await ctx.fetch(cmd.fetch, cmd.username, cmd.password, "sota")
        await ctx.verify(artifact, cmd.signature, None)
        await ctx.notify("ota.installing", f"installing mender artifact {artifact.name}")
        installed = await _blocking(pm.install_mender, artifact)
        return Outcome(f"mender artifact {installed} installed; it runs after the reboot",
                       data={"log": [f"mender install {artifact.name}"]}, reboot=True)
    mode = cmd.mode or "full"
    await _installing(ctx)
    changed = await _blocking(pm.update, mode, list(cmd.packages) or None)
    log_lines = [f"apt-get ({mode}): {line}" for line in changed] or [f"apt-get ({mode}): nothing to do"]
    if cmd.logs_to_file:
        log_path = ctx.work_dir.parent / "sota.log"
        with log_path.open("a") as handle:
            handle.write("\n".join(log_lines) + "\n")
        data: dict[str, Any] = {"log_file": str(log_path), "changed": changed}
    else:
        data = {"log": log_lines, "changed": changed}
    reboot = mode != "download-only" and bool(changed) and (cmd.device_reboot or "no").lower() in ("yes", "y")
    return Outcome(f"SOTA {mode}: {len(changed)} package(s)", data=data, reboot=reboot)


async def pota(cmd: PotaCommand, ctx: Context) -> Outcome:
    firmware = await fota(cmd.fota, ctx, stage_only=True)
    software = await sota(cmd.sota, ctx)
    return Outcome(f"POTA: {firmware.message}; {software.message}", data=software.data, reboot=True)


# -- package sources ------------------------------------------------------------------------------


def sources(cmd: SourceCommand, ctx: Context) -> Outcome:
    pm = ctx.hardware.packages
    if cmd.action == "list":
        return Outcome("package sources listed", data={"sources": pm.sources()})
    filename = cmd.filename or ("sources.list" if cmd.target == "os" else None)
    if not filename:
        raise HardwareError(ResultCode.INSTALL_FAILURE, f"source {cmd.action}: a file name is required")
    if cmd.action in ("add", "update"):
        if cmd.action == "update" and filename not in pm.sources():
            raise HardwareError(ResultCode.INSTALL_FAILURE, f"source update: no source file {filename}")
        pm.add_source(filename, list(cmd.sources))
        return Outcome(f"source {filename} {'added' if cmd.action == 'add' else 'updated'}")
    pm.remove_source(filename)
    return Outcome(f"source {filename} removed")
