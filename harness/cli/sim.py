"""`fleetrig sim device`: one simulated device in the foreground."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

import typer

from agent.agent import Agent, AgentError
from agent.env import AgentEnvError, load_agent_env
from agent.state import StateDir
from harness.cli.output import fail
from simulators.families import FAMILY_NAMES
from simulators.hardware import SimulatedHardware

app = typer.Typer(no_args_is_help=True)


@app.command("device")
def device(
    agent_env: Path = typer.Option(..., "--agent-env", help="The agent.env written by provisioning."),
    state_dir: Path = typer.Option(..., "--state-dir", help="Where the device keeps its credentials."),
    family: str = typer.Option("imx", "--family", help=f"One of: {', '.join(FAMILY_NAMES)}."),
    until: str | None = typer.Option(None, "--until", help="'registered': exit 0 once the device is live."),
    timeout: float = typer.Option(120.0, "--timeout", help="With --until: give up after this many seconds."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Boot one simulated device from its agent.env; run until SIGINT/SIGTERM or --until."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if family not in FAMILY_NAMES:
        fail(f"--family {family!r}: choose one of {', '.join(FAMILY_NAMES)}", 2)
    if until not in (None, "registered"):
        fail(f"--until {until!r}: the only condition is 'registered'", 2)
    try:
        env = load_agent_env(agent_env)
    except AgentEnvError as exc:
        fail(f"agent.env refused: {exc}")
    hardware = SimulatedHardware(family, env.serial)
    agent = Agent(env, StateDir(state_dir), hardware)
    try:
        asyncio.run(_run(agent, hardware, until is not None, timeout))
    except AgentError as exc:
        fail(str(exc))


async def _run(agent: Agent, hardware: SimulatedHardware, until_live: bool, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    if until_live:
        task = asyncio.create_task(agent.run_until_live(timeout))
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        await task  # AgentError (refused, TLS verification failed, not live in time): see device()
        print(f"{agent.serial} registered and live", flush=True)
        return
    # Powered on until a signal or a shutdown command; a reboot command cycles the agent.
    while True:
        requested: list[str] = []
        task = asyncio.create_task(agent.run())

        def power(action: str, task: asyncio.Task[None] = task, requested: list[str] = requested) -> None:
            requested.append(action)
            task.cancel()

        hardware.power_hook = power
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        print(f"{agent.serial} powered on", flush=True)
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if requested[-1:] != ["reboot"]:
            break
        print(f"{agent.serial} rebooting", flush=True)
        await asyncio.sleep(0.5)
        hardware.boot()
        agent.live.clear()
    print(f"{agent.serial} powered off", flush=True)
