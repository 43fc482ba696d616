"""AOTA on a real device: the `docker` CLI, and `docker compose` (or the older `docker-compose`).

The CLI rather than the Engine API: it is what the device's administrators use, it follows
the daemon's configuration (contexts, registries, credentials), and it needs no client
library on the device. Listings are read as one JSON object per line (`--format '{{json .}}'`).
Without docker on the device every command answers 400 "no container runtime on this device";
container statistics, which telemetry reads on its own, are then simply empty.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.hardware import HardwareError
from agent.linux import commands
from agent.wire import ResultCode

NO_RUNTIME = "no container runtime on this device (docker is not installed)"
NO_COMPOSE = "no docker compose on this device (neither 'docker compose' nor docker-compose works)"


def _json_lines(text: str) -> list[dict[str, Any]]:
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


class DockerRuntime:
    def __init__(self, *, timeout: float = 900.0) -> None:
        self.timeout = timeout
        self._compose: list[str] | None = None

    def _docker(self, *args: str, what: str, timeout: float | None = None) -> str:
        if not commands.which("docker"):
            raise HardwareError(ResultCode.INSTALL_FAILURE, NO_RUNTIME)
        return commands.run(["docker", *args], what=what, timeout=timeout or self.timeout)

    def _compose_cli(self) -> list[str]:
        if self._compose is None:
            if commands.which("docker") and commands.output(["docker", "compose", "version"]):
                self._compose = ["docker", "compose"]
            elif commands.which("docker-compose"):
                self._compose = ["docker-compose"]
            else:
                raise HardwareError(ResultCode.INSTALL_FAILURE,
                                    NO_RUNTIME if not commands.which("docker") else NO_COMPOSE)
        return self._compose

    def _compose_run(self, project: str, *args: str, what: str) -> str:
        return commands.run([*self._compose_cli(), "-p", project, *args], what=what, timeout=self.timeout)

    # -- listings ------------------------------------------------------------------------------------

    def images(self) -> list[dict[str, Any]]:
        rows = _json_lines(self._docker("image", "ls", "--format", "{{json .}}", what="docker images", timeout=60))
        return [{"reference": f"{r.get('Repository')}:{r.get('Tag')}", "id": r.get("ID"), "size": r.get("Size")}
                for r in rows]

    def containers(self) -> list[dict[str, Any]]:
        rows = _json_lines(self._docker("ps", "-a", "--format", "{{json .}}", what="docker ps", timeout=60))
        return [{"name": r.get("Names"), "image": r.get("Image"), "state": r.get("State"),
                 "status": r.get("Status")} for r in rows]

    def stats(self) -> list[dict[str, Any]]:
        if not commands.which("docker"):
            return []
        text = commands.output(["docker", "stats", "--no-stream", "--format", "{{json .}}"], timeout=30)
        return [{"name": r.get("Name"), "cpu_percent": r.get("CPUPerc"), "memory": r.get("MemUsage")}
                for r in _json_lines(text)]

    # -- images --------------------------------------------------------------------------------------

    def _present(self, reference: str) -> bool:
        try:
            self._docker("image", "inspect", reference, what="docker image inspect", timeout=60)
        except HardwareError:
            return False
        return True

    def image_import(self, archive: Path, tag: str) -> str:
        if self._present(tag):
            raise HardwareError(ResultCode.IMAGE_IMPORT_FAILURE, f"FAILED IMAGE IMPORT, IMAGE ALREADY PRESENT: {tag}")
        self._docker("import", str(archive), tag, what="AOTA import")
        return tag

    def image_load(self, archive: Path) -> list[str]:
        text = self._docker("load", "-i", str(archive), what="AOTA load")
        loaded = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Loaded image")]
        return loaded or [archive.name]

    def image_pull(self, reference: str) -> str:
        self._docker("pull", "-q", reference, what="AOTA pull")
        return reference

    def image_remove(self, reference: str) -> None:
        self._docker("image", "rm", reference, what="AOTA remove")

    # -- compose -------------------------------------------------------------------------------------

    def compose_up(self, project: str, directory: Path, file: str) -> list[str]:
        compose = directory / file
        if not compose.is_file():
            raise HardwareError(ResultCode.INSTALL_FAILURE,
                                f"Unable to start docker-compose container: {file} not found in {project}")
        self._compose_run(project, "-f", str(compose), "up", "-d", what="AOTA compose up")
        names = self._compose_run(project, "-f", str(compose), "ps", "--format", "{{.Name}}", what="compose ps")
        return [line.strip() for line in names.splitlines() if line.strip()]

    def compose_pull(self, project: str, directory: Path, file: str) -> list[str]:
        compose = directory / file
        if not compose.is_file():
            raise HardwareError(ResultCode.INSTALL_FAILURE,
                                f"Unable to download docker-compose container: {file} not found in {project}")
        self._compose_run(project, "-f", str(compose), "pull", what="AOTA compose pull")
        images = self._compose_run(project, "-f", str(compose), "config", "--images", what="compose config")
        return [line.strip() for line in images.splitlines() if line.strip()]

    def compose_down(self, project: str) -> None:
        self._compose_run(project, "down", what="AOTA compose down")

    def compose_list(self) -> list[dict[str, Any]]:
        text = commands.run([*self._compose_cli(), "ls", "--all", "--format", "json"], what="compose ls", timeout=60)
        try:
            rows = json.loads(text or "[]")
        except json.JSONDecodeError:
            rows = []
        return [{"project": r.get("Name"), "status": r.get("Status"), "file": r.get("ConfigFiles"),
                 "running": str(r.get("Status", "")).startswith("running")} for r in rows if isinstance(r, dict)]

    def compose_remove(self, project: str) -> None:
        self._compose_run(project, "down", "--rmi", "all", what="AOTA compose remove")
