"""Many simulated devices on one event loop: the fleet runner.

Each device is an Agent over SimulatedHardware, running as one task. Connect storms are paced
by a semaphore held from power-on until the device is live (or has failed), so a fleet of
thousands does not push the broker past the cliff where it queues instead of serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
    reboots: int = 0

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
        # aiomqtt opens each connection (TCP connect and TLS handshake, blocking) in the loop's
        # default executor, and the agents write their state there; the stock pool (cpu + 4
        # threads) caps a fleet at a handful of handshakes in flight. More threads than about a
        # quarter of the devices in flight only add memory and GIL hand-offs.
        self._connect_threads = max(8, min(connect_concurrency // 16, 16))
        self._on_change: Callable[[FleetProgress], None] | None = None
        self._ca_pems: dict[str, str] = {}
        self._prepared_loop: asyncio.AbstractEventLoop | None = None
        self._watchers: list[tuple[set[str], asyncio.Event]] = []
        self._power_tasks: set[asyncio.Task[None]] = set()
        #: Seconds a rebooting device stays off.
        self.reboot_delay = 0.5

    def add(self, env: AgentEnv | str | Path, state_dir: str | Path, family: str) -> SimDevice:
        if not isinstance(env, AgentEnv):
            env = load_agent_env(env)
        if env.serial in self.devices:
            raise ValueError(f"device {env.serial} is in the fleet already")
        # Every agent.env of a platform carries the same CA: one copy for the fleet, not one each.
        ca_pem = self._ca_pems.setdefault(env.ca_cert_pem, env.ca_cert_pem)
        if ca_pem is not env.ca_cert_pem:
            env = dataclasses.replace(env, ca_cert_pem=ca_pem)
        hardware = SimulatedHardware(family, env.serial)
        # Written without fsync: see agent.state.write_atomic.
        agent = Agent(env, StateDir(state_dir, durable=False), hardware, tls=self.tls, keepalive=self.keepalive,
                      max_backoff=self.max_backoff, ack_timeout=self.ack_timeout)
        device = SimDevice(env.serial, family, agent, hardware)
        hardware.power_hook = lambda action, serial=env.serial: self._power_request(serial, action)
        self.devices[env.serial] = device
        self.progress.total += 1
        return device

    def on_change(self, callback: Callable[[FleetProgress], None]) -> None:
        self._on_change = callback

    def _changed(self) -> None:
        if self._on_change:
            self._on_change(self.progress)

    async def _lifetime(self, device: SimDevice, until_live: bool) -> None:
        # The gate is taken before the agent starts and given back as soon as the device is live
        # (or has failed): at most `connect_concurrency` devices are between power-on and live.
        held = False

        def went_live() -> None:
            nonlocal held
            if held:
                held = False
                self._gate.release()
            if device.live_at is None:
                device.live_at = time.monotonic()
                self.progress.live += 1
                self._changed()
            self._settled(device.serial)

        try:
            await self._gate.acquire()
            held = True
            device.agent.on_live = went_live
            await device.agent.run(until_live=until_live)
        except AgentError as exc:
            device.error = str(exc)
            self.progress.failed += 1
            self._changed()
        finally:
            device.agent.on_live = None
            if held:
                held = False
                self._gate.release()
            self._settled(device.serial)

    def _prepare_loop(self) -> None:
        """Loop settings for thousands of agents; made once, at the first power-on.

        Process-wide tuning (garbage collector, TLS buffers) is the entry point's call:
        harness.broker.tuning.tune_process(), which `fleetrig sim fleet`, the demo and the benches make.
        """
        loop = asyncio.get_running_loop()
        if self._prepared_loop is loop:
            return
        self._prepared_loop = loop
        current = getattr(loop, "_default_executor", None)
        if not (isinstance(current, ThreadPoolExecutor) and current._max_workers >= self._connect_threads):
            loop.set_default_executor(
                ThreadPoolExecutor(max_workers=self._connect_threads, thread_name_prefix="fleet-connect")
            )
            if current is not None:
                current.shutdown(wait=False)

    def power_on(self, serial: str, *, until_live: bool = False) -> SimDevice:
        device = self.devices[serial]
        self._prepare_loop()
        if device.powered:
            return device
        device.error = ""
        device.hardware.boot()  # a staged firmware or root file system takes over at power-on
        device.agent.live.clear()
        if device.live_at is not None:
            device.live_at = None
            self.progress.live -= 1
        device.task = asyncio.create_task(self._lifetime(device, until_live), name=f"device-{serial}")
        return device

    def _power_request(self, serial: str, action: str) -> None:
        """The device asked for a reboot or shutdown (a command did): cycle it from outside."""
        task = asyncio.get_running_loop().create_task(self._cycle(serial, action))
        self._power_tasks.add(task)
        task.add_done_callback(self._power_tasks.discard)

    async def _cycle(self, serial: str, action: str) -> None:
        device = self.devices[serial]
        device.reboots += action == "reboot"
        await self.power_off(serial)
        if action == "reboot":
            await asyncio.sleep(self.reboot_delay)
            self.power_on(serial)

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
        pending = {d.serial for d in targets if not d.live and not d.error and d.powered}
        if pending:
            # Each device reports once it is settled (live, failed or off): O(1) per device,
            # where polling every device would cost O(fleet) per poll.
            settled = asyncio.Event()
            watcher = (pending, settled)
            self._watchers.append(watcher)
            try:
                await asyncio.wait_for(settled.wait(), max(timeout, 0))
            except TimeoutError:
                pass
            finally:
                self._watchers.remove(watcher)
        return [d for d in targets if not d.live]

    def _settled(self, serial: str) -> None:
        for pending, event in self._watchers:
            pending.discard(serial)
            if not pending:
                event.set()

    async def stop(self) -> None:
        tasks = [d.task for d in self.devices.values() if d.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for device in self.devices.values():
            device.task = None
