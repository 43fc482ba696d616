"""What a live device does besides staying connected: commands, telemetry, events.

The Agent owns the connection; the DeviceManager owns the device-management state that lives
across connections (configuration, the telemetry cache, the one running update) and talks
through whatever connection is current. A command's result is published before its
after-action (reboot, shutdown, decommission) runs, so the cloud always hears the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from agent import wire
from agent.config import AgentConfig
from agent.dispatcher import Dispatcher
from agent.env import AgentEnv
from agent.hardware import Hardware
from agent.state import StateDir
from agent.telemetry import Telemetry
from agent.wire import ResultCode

log = logging.getLogger("fleetrig.agent.manager")

Publish = Callable[[str, bytes], Awaitable[None]]
#: Longest an after-action may hold up stopping the agent (a wipe and a power command).
AFTER_ACTION_GRACE_S = 10.0


class DeviceManager:
    def __init__(self, env: AgentEnv, state: StateDir, hardware: Hardware,
                 on_decommission: Callable[[], None] | None = None) -> None:
        self.env = env
        self.state = state
        self.hardware = hardware
        self.serial = env.serial
        self.config = AgentConfig(state.root)
        self.telemetry = Telemetry(hardware, self.config, env.serial)
        self._dispatcher: Dispatcher | None = None
        self.decommissioned = False
        self._on_decommission = on_decommission
        self._publish: Publish | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Commands whose result is sent and whose after-action (reboot, decommission...) runs.
        self._finishing: set[asyncio.Task[Any]] = set()

    @property
    def dispatcher(self) -> Dispatcher:
        """Made at the first command: most simulated devices of a load test never get one."""
        if self._dispatcher is None:
            self._dispatcher = Dispatcher(
                self.hardware, self.config, self.state.root / "work", ca_pem=self.env.ca_cert_pem,
                signature_cert=self.env.signature_cert_pem, repo_url=self.env.repo_url, notify=self.notify,
                decommission=self._decommission,
            )
        return self._dispatcher

    # -- connection -------------------------------------------------------------------------------

    async def connected(self, publish: Publish) -> None:
        """A session is live: publish through it, and resend what the platform has not acked."""
        self._publish = publish
        with contextlib.suppress(Exception):
            await self.telemetry.flush(publish)

    def disconnected(self) -> None:
        self._publish = None

    def is_connected(self) -> bool:
        return self._publish is not None

    async def _send(self, topic: str, payload: bytes) -> None:
        if self._publish is None:
            raise ConnectionError("not connected")
        await self._publish(topic, payload)

    async def run_telemetry(self) -> None:
        await self.telemetry.run(self._send, self.is_connected)

    # -- messages from the platform ----------------------------------------------------------------

    def on_ack(self, ack: wire.Ack) -> bool:
        """Telemetry acknowledgements; True when the ack was one."""
        return ack.ref.startswith("telemetry-") and self.telemetry.acknowledge(ack.ref)

    def on_rpc(self, request_id: str, payload: bytes) -> None:
        """Run a command in its own task, so the connection keeps reading while it works."""
        task = asyncio.create_task(self._rpc(request_id, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._finishing.discard)

    async def _rpc(self, request_id: str, payload: bytes) -> None:
        after = None
        try:
            request = wire.RpcRequest.parse(request_id, payload)
        except wire.WireError as exc:
            result = wire.RpcResult(ResultCode.XML_FAILURE, str(exc))
        else:
            answer = await self.dispatcher.handle(request)
            result, after = answer.result, answer.after
        try:
            await self._send(wire.rpc_response_topic(self.serial, request_id), result.to_bytes())
        except Exception as exc:  # the platform's deadline will tell the operator
            log.warning("%s: could not send the result of %s: %s", self.serial, request_id, exc)
        if after is not None:
            task = asyncio.current_task()
            if task is not None:
                self._finishing.add(task)
            await asyncio.sleep(0.2)  # let the result leave before the device goes down
            await after()

    async def notify(self, kind: str, message: str) -> None:
        """An entry for the device's event log on the platform (dropped when offline)."""
        if self._publish is None:
            return
        with contextlib.suppress(Exception):
            await self._publish(wire.topic(self.serial, wire.EVENTS), wire.DeviceEvent(kind, message).to_bytes())

    async def _decommission(self) -> None:
        await asyncio.to_thread(self.state.wipe)
        self.decommissioned = True
        if self._on_decommission:
            self._on_decommission()

    async def stop(self) -> None:
        """Cancel running commands; one whose result the platform already has finishes its
        after-action first (the platform ends a decommissioned device's session at once, and the
        device must still wipe its credentials)."""
        try:
            if self._finishing:
                await asyncio.wait(list(self._finishing), timeout=AFTER_ACTION_GRACE_S)
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
