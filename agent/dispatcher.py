"""The device manager: one RPC in, one result out, under the seed's safety rules.

An RPC becomes a manifest (the same path a raw `triggerota` manifest takes), the manifest is
parsed and validated (300 and nothing changed when it fails), and the command runs:
queries and configuration at once; updates one at a time (a second one while one runs gets
the busy status), between diagnostics before and after, within the command's timeout. Power
and decommission answer first and act after the answer is sent, so the cloud always hears the
result.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import diagnostics, ota, packages, wire
from agent.config import AgentConfig
from agent.hardware import Hardware, HardwareError
from agent.manifest import (
    MESSAGES,
    AotaCommand,
    ConfigCommand,
    DecommissionCommand,
    FotaCommand,
    ManifestError,
    OtaCommand,
    PotaCommand,
    PowerCommand,
    QueryCommand,
    SotaCommand,
    SourceCommand,
    parse_manifest,
)
from agent.rpc_forms import manifest_from_rpc
from agent.wire import ResultCode

log = logging.getLogger("fleetrig.agent.dispatcher")

AGENT_VERSION = "fleetrig-agent 0.1.0"

After = Callable[[], Awaitable[None]]
Notify = Callable[[str, str], Awaitable[None]]


@dataclass
class Answer:
    result: wire.RpcResult
    after: After | None = None


class Dispatcher:
    """Runs manifests on one device."""

    def __init__(self, hardware: Hardware, config: AgentConfig, work_dir: Path, *, ca_pem: str | None,
                 signature_cert: str | None, repo_url: str | None, notify: Notify,
                 decommission: Callable[[], Awaitable[None]]) -> None:
        self.hardware = hardware
        self.config = config
        self.work_dir = Path(work_dir)
        self.notify = notify
        self.decommission = decommission
        self.ctx = ota.Context(hardware, config, self.work_dir / "ota", ca_pem, signature_cert, repo_url, notify)
        self.busy_with: str | None = None
        self.started_at = time.time()

    async def handle(self, request: wire.RpcRequest) -> Answer:
        job = request.job_id
        try:
            if request.method == wire.TRIGGER_OTA:
                raw = request.params.get("manifest")
                if not isinstance(raw, str):
                    raise ManifestError("triggerota: field 'manifest' must hold the manifest XML")
                xml = raw
            else:
                xml = manifest_from_rpc(request.method, request.params)
            manifest = parse_manifest(xml)
        except ManifestError as exc:
            return Answer(wire.RpcResult(exc.status, str(exc), job))
        command = manifest.command
        try:
            if isinstance(command, OtaCommand):
                return await self._update(command, request)
            if isinstance(command, QueryCommand):
                data = await asyncio.to_thread(self.query, command.option)
                return Answer(wire.RpcResult(ResultCode.COMMAND_SUCCESS, f"query {command.option}", job, data))
            if isinstance(command, ConfigCommand):
                message, data = await self._config(command)
                return Answer(wire.RpcResult(ResultCode.COMMAND_SUCCESS, message, job, data))
            if isinstance(command, SourceCommand):
                outcome = ota.sources(command, self.ctx)
                return Answer(wire.RpcResult(ResultCode.COMMAND_SUCCESS, outcome.message, job, outcome.data))
            if isinstance(command, PowerCommand):
                action = command.action
                return Answer(wire.RpcResult(ResultCode.COMMAND_SUCCESS,
                                             f"{action}: going offline", job), self._power(action))
            if isinstance(command, DecommissionCommand):
                return Answer(wire.RpcResult(ResultCode.COMMAND_SUCCESS,
                                             "decommission: credentials removed; shutting down", job,
                                             {"action": "decommission"}), self._decommission())
        except HardwareError as exc:
            return Answer(wire.RpcResult(exc.status, str(exc), job))
        return Answer(wire.RpcResult(ResultCode.COMMAND_FAILURE, f"{type(command).__name__} is not supported", job))

    # -- updates ------------------------------------------------------------------------------------

    async def _update(self, command: OtaCommand, request: wire.RpcRequest) -> Answer:
        job = request.job_id
        if self.busy_with is not None:
            busy = wire.ResultCode.OTA_FAILURE
            return Answer(wire.RpcResult(busy, f"{MESSAGES[busy]}: {self.busy_with} is running", job))
        name = command.ota_type.upper()
        self.busy_with = f"{name} {job}".strip()
        try:
            await self.notify("ota.started", f"{name} started")
            diagnostics.check(self.hardware, self.config, "pre")
            runner = {AotaCommand: ota.aota, FotaCommand: ota.fota, SotaCommand: ota.sota,
                      PotaCommand: ota.pota}[type(command)]
            try:
                outcome = await asyncio.wait_for(runner(command, self.ctx), request.timeout_s)  # type: ignore[operator]
            except TimeoutError:
                raise HardwareError(ResultCode.COMMAND_FAILURE,
                                    f"{name} did not finish within {request.timeout_s:.0f}s") from None
            diagnostics.check(self.hardware, self.config, "post")
        except HardwareError as exc:
            await self.notify("ota.failed", f"{name} failed: {exc}")
            return Answer(wire.RpcResult(exc.status, str(exc), job))
        finally:
            self.busy_with = None
        await self.notify("ota.succeeded", f"{name}: {outcome.message}")
        return Answer(wire.RpcResult(ResultCode.COMMAND_SUCCESS, outcome.message, job, outcome.data),
                      self._power("restart") if outcome.reboot else None)

    # -- configuration ------------------------------------------------------------------------------

    async def _config(self, command: ConfigCommand) -> tuple[str, Any]:
        cfg = self.config
        if command.cmd == "get_element":
            return "configuration read", cfg.get(command.path or "")
        if command.cmd == "set_element":
            return "configuration set", cfg.set(command.path or "")
        if command.cmd == "append":
            return "configuration appended", cfg.append(command.path or "")
        if command.cmd == "remove":
            return "configuration element removed", cfg.remove(command.path or "")
        if command.cmd == "load":
            if not command.fetch:
                raise HardwareError(ResultCode.INSTALL_FAILURE, "config load: fetch is required")
            path = await self.ctx.fetch(command.fetch, None, None, "config")
            await self.ctx.verify(path, command.signature, None)
            if path.name.endswith((".tar", ".tar.gz", ".tgz")):
                unpacked = self.ctx.work_dir / "config" / "unpacked"
                members = await asyncio.to_thread(packages.safe_extract, path, unpacked)
                confs = [m for m in members if m.endswith(".conf")]
                if len(confs) != 1:
                    raise HardwareError(ResultCode.INSTALL_FAILURE,
                                        f"config load: {path.name} must hold one .conf file")
                path = unpacked / confs[0]
            return "configuration loaded", cfg.load(path.read_bytes())
        raise HardwareError(ResultCode.COMMAND_FAILURE, f"config command {command.cmd!r} is not supported")

    # -- queries ------------------------------------------------------------------------------------

    def query(self, option: str) -> dict[str, Any]:
        facts = self.hardware.facts()
        fw = self.hardware.firmware_info()
        parts: dict[str, Callable[[], Any]] = {
            "hw": lambda: {k: facts.get(k) for k in ("manufacturer", "product", "cpu_id", "total_memory", "disks")},
            "fw": lambda: {"vendor": fw.vendor, "version": fw.version, "release_date": fw.release_date.isoformat()},
            "os": lambda: {"os": facts.get("os"), "kernel": facts.get("kernel", platform.release()),
                           "rootfs": facts.get("rootfs")},
            "version": lambda: {"agent": AGENT_VERSION},
            "swbom": lambda: {"packages": self.hardware.packages.installed(),
                              "images": _or_reason(self.hardware.containers.images)},
            "status": lambda: {**self.hardware.resources().__dict__, "busy": self.busy_with,
                               "containers": _or_reason(self.hardware.containers.containers),
                               "uptime_s": round(time.time() - self.started_at, 1)},
        }
        if option == "all":
            return {name: build() for name, build in parts.items()}
        if option not in parts:
            raise HardwareError(ResultCode.XML_FAILURE, f"unknown query option {option!r}")
        return {option: parts[option]()}

    # -- power ----------------------------------------------------------------------------------------

    def _power(self, action: str) -> After:
        async def act() -> None:
            await self.notify("power", f"{action} requested")
            try:
                # On the loop's thread: a simulated device's power hook schedules its power cycle there.
                (self.hardware.shutdown if action == "shutdown" else self.hardware.reboot)()
            except HardwareError as exc:  # the device stays up; its event log says why
                log.error("%s failed: %s", action, exc)
                await self.notify("power.failed", f"{action} failed: {exc}")

        return act

    def _decommission(self) -> After:
        async def act() -> None:
            await self.notify("decommission", "credentials removed; shutting down")
            await self.decommission()
            try:
                self.hardware.shutdown()
            except HardwareError as exc:  # credentials are gone: the device cannot connect again anyway
                log.error("shutdown after decommission failed: %s", exc)

        return act


def _or_reason(listing: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]] | dict[str, str]:
    """A listing for a query, or why the device cannot give it (no container runtime, say)."""
    try:
        return listing()
    except HardwareError as exc:
        return {"unavailable": str(exc)}
