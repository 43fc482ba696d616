"""Many simulated devices on one event loop: the fleet runner.

Each device is an Agent over SimulatedHardware, running as one task. Connect storms are paced
by a semaphore held from power-on until the device is live (or has failed), so a fleet of
thousands does not push the broker past the cliff where it queues instead of serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.agent import Agent, AgentError, TlsContexts
from agent.env import AgentEnv, load_agent_env
from agent.state import StateDir
from simulators.hardware import SimulatedHardware


@dataclass
class SimDevice:
    """One simulated device: its agent, hardware and power state."""

    serial: str
    family: str
    agent: Agent
    hardware: SimulatedHardware
    task: asyncio.Task[None] | None = None
    error: str = ""
    live_at: float | None = None

    @property
    def powered(self) -> bool:
        return self.task is not None and not self.task.done()

    @property
    def live(self) -> bool:
        return self.agent.live.is_set()


@dataclass
class FleetProgress:
    total: int = 0
    live: int = 0
    failed: int = 0
    started_at: float = field(default_factory=time.monotonic)


class Fleet:
    """A set of simulated devices sharing one loop and one set of TLS contexts."""

    def __init__(self, *, connect_concurrency: int = 128, keepalive: int = 60, max_backoff: float = 10.0,
                 ack_timeout: float = 15.0) -> None:
        self.devices: dict[str, SimDevice] = {}
        self.tls = TlsContexts()
        self.keepalive = keepalive
        self.max_backoff = max_backoff
        self.ack_timeout = ack_timeout
        self.progress = FleetProgress()
        self._gate = asyncio.Semaphore(connect_concurrency)
        self._on_change: Callable[[FleetProgress], None] | None = None

    def add(self, env: AgentEnv | str | Path, state_dir: str | Path, family: str) -> SimDevice:
        if not isinstance(env, AgentEnv):
            env = load_agent_env(env)
        if env.serial in self.devices:
            raise ValueError(f"device {env.serial} is in the fleet already")
        hardware = SimulatedHardware(family, env.serial)
        agent = Agent(env, StateDir(state_dir), hardware, tls=self.tls, keepalive=self.keepalive,
                      max_backoff=self.max_backoff, ack_timeout=self.ack_timeout)
        device = SimDevice(env.serial, family, agent, hardware)
        self.devices[env.serial] = device
        self.progress.total += 1
        return device

    def on_change(self, callback: Callable[[FleetProgress], None]) -> None:
        self._on_change = callback

    def _changed(self) -> None:
        if self._on_change:
            self._on_change(self.progress)

    async def _lifetime(self, device: SimDevice, until_live: bool) -> None:
        runner = asyncio.create_task(device.agent.run(until_live=until_live))
        try:
            async with self._gate:
                live = asyncio.create_task(device.agent.live.wait())
                await asyncio.wait({runner, live}, return_when=asyncio.FIRST_COMPLETED)
                live.cancel()
            if device.agent.live.is_set() and device.live_at is None:
                device.live_at = time.monotonic()
                self.progress.live += 1
                self._changed()
            await runner
        except AgentError as exc:
            device.error = str(exc)
            self.progress.failed += 1
            self._changed()
        finally:
            if not runner.done():
                runner.cancel()
                with contextlib.suppress(asyncio.CancelledError, AgentError):
                    await runner

    def power_on(self, serial: str, *, until_live: bool = False) -> SimDevice:
        device = self.devices[serial]
        if device.powered:
            return device
        device.error = ""
        device.agent.live.clear()
        if device.live_at is not None:
            device.live_at = None
            self.progress.live -= 1
        device.task = asyncio.create_task(self._lifetime(device, until_live), name=f"device-{serial}")
        return device

    async def power_off(self, serial: str) -> None:
        device = self.devices[serial]
        if device.task is not None:
            device.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await device.task
            device.task = None

    def boot_all(self, *, until_live: bool = False) -> None:
        for serial in self.devices:
            self.power_on(serial, until_live=until_live)

    async def wait_live(self, timeout: float, serials: list[str] | None = None) -> list[SimDevice]:
        """Wait until every (named) device is live or has failed; return those not live."""
        targets = [self.devices[s] for s in serials] if serials else list(self.devices.values())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = [d for d in targets if not d.live and not d.error and d.powered]
            if not pending:
                break
            await asyncio.sleep(0.05)
        return [d for d in targets if not d.live]

    async def stop(self) -> None:
        tasks = [d.task for d in self.devices.values() if d.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for device in self.devices.values():
            device.task = None
