"""A modelled container runtime (docker + docker-compose) for simulated devices.

It keeps images, containers and compose stacks in memory with the rules AOTA relies on: an
import of an image that is present fails with 401, pulls come from a modelled registry (an
unknown image is 404), removing what is not there fails, a stack brought down that is not up
fails. Storage is charged for every image, so diagnostics see it fill up.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.hardware import HardwareError
from agent.wire import ResultCode
from simulators.families import Noise

#: Images the modelled registry can serve, with their sizes in MB.
REGISTRY: dict[str, int] = {
    "hello-world:latest": 1, "busybox:latest": 5, "alpine:3.20": 8, "nginx:1.27": 190, "redis:7": 120,
    "eclipse-mosquitto:2": 12, "python:3.11-slim": 130, "grafana/grafana:11.0.0": 420,
    "registry.example.com/edge/inference:2.1": 850, "registry.example.com/edge/collector:1.4": 60,
}
_REFERENCE = re.compile(r"^[a-z0-9]+([._/-][a-z0-9]+)*(:[A-Za-z0-9_.-]{1,128})?$")


def normalize(reference: str) -> str:
    reference = reference.strip()
    if not _REFERENCE.match(reference):
        raise HardwareError(ResultCode.INSTALL_FAILURE, f"invalid image reference {reference!r}")
    return reference if ":" in reference.rsplit("/", 1)[-1] else reference + ":latest"


def _image_id(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()[:12]


def compose_images(compose_file: Path) -> dict[str, str]:
    """Service name -> image of a docker-compose file (the subset of YAML compose files use)."""
    services: dict[str, str] = {}
    in_services, current, indent = False, None, None
    for raw in compose_file.read_text(errors="replace").splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        text = line.strip()
        if depth == 0:
            in_services = text == "services:"
            continue
        if not in_services:
            continue
        if indent is None:
            indent = depth
        if depth == indent and text.endswith(":"):
            current = text[:-1].strip().strip("'\"")
            services[current] = ""
        elif current and text.startswith("image:"):
            services[current] = text.split(":", 1)[1].strip().strip("'\"")
    if not services:
        raise HardwareError(ResultCode.INSTALL_FAILURE, f"{compose_file.name}: no services defined")
    missing = [name for name, image in services.items() if not image]
    if missing:
        raise HardwareError(ResultCode.INSTALL_FAILURE, f"{compose_file.name}: service {missing[0]} names no image")
    return services


@dataclass
class Stack:
    project: str
    file: str
    services: dict[str, str]
    running: bool = False


@dataclass
class SimulatedContainerRuntime:
    """docker and docker-compose as a device runs them, in memory."""

    storage_mb: int = 8000
    images_: dict[str, int] = field(default_factory=dict)  # reference -> size MB
    containers_: dict[str, dict[str, Any]] = field(default_factory=dict)
    stacks: dict[str, Stack] = field(default_factory=dict)
    rng: Noise = field(default_factory=lambda: Noise(1))

    def used_mb(self) -> int:
        return sum(self.images_.values())

    def _charge(self, reference: str, size: int) -> None:
        if self.used_mb() + size > self.storage_mb:
            raise HardwareError(ResultCode.INSTALL_FAILURE, f"no space left for image {reference} ({size} MB)")
        self.images_[reference] = size

    def images(self) -> list[dict[str, Any]]:
        return [{"reference": ref, "id": _image_id(ref), "size_mb": size} for ref, size in sorted(self.images_.items())]

    def containers(self) -> list[dict[str, Any]]:
        return [{"name": name, **info} for name, info in sorted(self.containers_.items())]

    def stats(self) -> list[dict[str, Any]]:
        return [
            {"name": name, "image": info["image"], "cpu_percent": round(self.rng.uniform(0.1, 35.0), 2),
             "memory_mb": round(self.rng.uniform(5, 300), 1)}
            for name, info in sorted(self.containers_.items()) if info["state"] == "running"
        ]

    def image_import(self, archive: Path, tag: str) -> str:
        reference = normalize(tag)
        if reference in self.images_:
            raise HardwareError(ResultCode.IMAGE_IMPORT_FAILURE,
                                f"FAILED IMAGE IMPORT, IMAGE ALREADY PRESENT: {reference}")
        self._charge(reference, max(1, archive.stat().st_size // 1_000_000))
        return reference

    def image_load(self, archive: Path) -> list[str]:
        name = archive.name.split(".", 1)[0]
        reference = normalize(name.lower())
        if reference in self.images_:
            raise HardwareError(ResultCode.IMAGE_IMPORT_FAILURE,
                                f"FAILED IMAGE IMPORT, IMAGE ALREADY PRESENT: {reference}")
        self._charge(reference, max(1, archive.stat().st_size // 1_000_000))
        return [reference]

    def image_pull(self, reference: str) -> str:
        reference = normalize(reference)
        if reference not in REGISTRY:
            raise HardwareError(ResultCode.FILE_NOT_FOUND, f"image {reference} not found in the registry")
        if reference not in self.images_:
            self._charge(reference, REGISTRY[reference])
        return reference

    def image_remove(self, reference: str) -> None:
        reference = normalize(reference)
        if reference not in self.images_:
            raise HardwareError(ResultCode.INSTALL_FAILURE, f"no such image: {reference}")
        users = [name for name, info in self.containers_.items() if info["image"] == reference]
        if users:
            raise HardwareError(ResultCode.INSTALL_FAILURE, f"image {reference} is used by container {users[0]}")
        del self.images_[reference]

    def _stack_images(self, project: str, directory: Path, file: str) -> dict[str, str]:
        compose = directory / file
        if not compose.is_file():
            raise HardwareError(ResultCode.INSTALL_FAILURE,
                                f"Unable to start docker-compose container: {file} not found in {project}")
        return compose_images(compose)

    def compose_pull(self, project: str, directory: Path, file: str) -> list[str]:
        services = self._stack_images(project, directory, file)
        try:
            pulled = [self.image_pull(image) for image in services.values()]
        except HardwareError as exc:
            raise HardwareError(ResultCode.INSTALL_FAILURE,
                                f"Unable to download docker-compose container: {exc}") from None
        self.stacks.setdefault(project, Stack(project, file, services))
        return pulled

    def compose_up(self, project: str, directory: Path, file: str) -> list[str]:
        services = self._stack_images(project, directory, file)
        for image in services.values():
            if normalize(image) not in self.images_:
                try:
                    self.image_pull(image)
                except HardwareError as exc:
                    raise HardwareError(ResultCode.INSTALL_FAILURE,
                                        f"Unable to start docker-compose container: {exc}") from None
        stack = Stack(project, file, services, running=True)
        self.stacks[project] = stack
        started = []
        for service, image in services.items():
            name = f"{project}-{service}-1"
            self.containers_[name] = {"image": normalize(image), "state": "running", "project": project}
            started.append(name)
        return started

    def compose_down(self, project: str) -> None:
        stack = self.stacks.get(project)
        if stack is None or not stack.running:
            raise HardwareError(ResultCode.INSTALL_FAILURE,
                                f"Unable to stop docker-compose container: {project} is not up")
        for name in [n for n, info in self.containers_.items() if info.get("project") == project]:
            del self.containers_[name]
        stack.running = False

    def compose_list(self) -> list[dict[str, Any]]:
        return [{"project": s.project, "file": s.file, "services": sorted(s.services), "running": s.running}
                for s in sorted(self.stacks.values(), key=lambda s: s.project)]

    def compose_remove(self, project: str) -> None:
        stack = self.stacks.get(project)
        if stack is None:
            raise HardwareError(ResultCode.INSTALL_FAILURE, f"no docker-compose stack {project}")
        if stack.running:
            self.compose_down(project)
        for image in set(stack.services.values()):
            reference = normalize(image)
            if reference in self.images_ and not any(i["image"] == reference for i in self.containers_.values()):
                del self.images_[reference]
        del self.stacks[project]
