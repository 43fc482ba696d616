"""`fleetrig sim device` and `fleetrig sim fleet`: simulated devices in the foreground.

`sim fleet` boots every DIR/SERIAL/agent.env on one event loop (the fleet runner of
simulators/fleet.py) and shows their states live, so management commands from another shell
meet live devices that obey reboot, shutdown and decommission. It stops on Ctrl-C, SIGTERM or
after --duration seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from harness.cli.choices import Family, Until
from harness.cli.options import group
from harness.cli.output import console, fail

if TYPE_CHECKING:
    from agent.agent import Agent
    from simulators.fleet import Fleet
    from simulators.hardware import SimulatedHardware

app = group("Simulated devices.")
#: Seconds between two refreshes of `sim fleet`'s status.
STATUS_INTERVAL = 0.5
#: Devices listed one per row in `sim fleet`'s status (the counts cover all).
STATUS_ROWS = 40


@app.command("device")
def device(
    agent_env: Path = typer.Option(..., "--agent-env", help="The agent.env written by provisioning."),
    state_dir: Path = typer.Option(..., "--state-dir", help="Where the device keeps its credentials."),
    family: Family = typer.Option("imx", "--family", help="The simulated hardware."),
    until: Until | None = typer.Option(None, "--until", help="registered: exit 0 once the device is live."),
    timeout: float = typer.Option(120.0, "--timeout", help="With --until: give up after this many seconds."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at DEBUG level."),
) -> None:
    """Boot one simulated device from its agent.env; run until SIGINT/SIGTERM or --until."""
    from agent.agent import Agent, AgentError
    from agent.env import AgentEnvError, load_agent_env
    from agent.state import StateDir
    from simulators.hardware import SimulatedHardware

    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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


@app.command("fleet")
def fleet(
    agent_env_dir: Path = typer.Option(..., "--agent-env-dir",
                                       help="Boot every DIR/SERIAL/agent.env (provisioning's --output-dir)."),
    state_dir: Path = typer.Option(Path("dev"), "--state-dir",
                                   help="Each device keeps its credentials in STATE_DIR/SERIAL."),
    family: Family | None = typer.Option(None, "--family", help="One family for all (default: take turns)."),
    duration: float | None = typer.Option(None, "--duration", min=0.1,
                                          help="Stop after this many seconds (default: at Ctrl-C or SIGTERM)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at DEBUG level."),
) -> None:
    """Run many simulated devices in the foreground with their live status."""
    from agent.env import AgentEnvError, load_agent_env
    from simulators.families import FAMILY_NAMES
    from simulators.fleet import Fleet

    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    files = sorted(agent_env_dir.glob("*/agent.env"))
    if not files:
        fail(f"--agent-env-dir {agent_env_dir}: no SERIAL/agent.env in it; write some with "
             f"'fleetrig pms provisioning provision ... --output-dir {agent_env_dir}'")

    async def run() -> None:
        runner = Fleet()
        for i, path in enumerate(files):
            try:
                env = load_agent_env(path)
            except AgentEnvError as exc:
                fail(f"{path}: agent.env refused: {exc}")
            runner.add(env, state_dir / env.serial, family or FAMILY_NAMES[i % len(FAMILY_NAMES)])
        await _run_fleet(runner, duration)

    from harness.broker.tuning import tune_process

    tune_process()  # thousands of agents in this process: see harness/broker/tuning.py
    asyncio.run(run())


def _fleet_counts(runner: Fleet) -> dict[str, int]:
    counts = {"live": 0, "booting": 0, "off": 0, "failed": 0}
    for d in runner.devices.values():
        counts["failed" if d.error else "live" if d.powered and d.live else "booting" if d.powered else "off"] += 1
    return counts


def _fleet_table(runner: Fleet):  # type: ignore[no-untyped-def]
    from rich.table import Table

    counts = _fleet_counts(runner)
    t = Table(title=f"{len(runner.devices)} simulated devices: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    for column in ("serial", "family", "state", "reboots", "last error"):
        t.add_column(column)
    shown = list(runner.devices.values())[:STATUS_ROWS]
    if len(shown) < len(runner.devices):
        t.caption = f"the first {len(shown)} of {len(runner.devices)} devices"
    for d in shown:
        state = "failed" if d.error else "live" if d.powered and d.live else "booting" if d.powered else "off"
        t.add_row(d.serial, d.family, state, str(d.reboots), (d.error or d.agent.last_error)[:60])
    return t


async def _run_fleet(runner: Fleet, duration: float | None) -> None:
    """Boot, then show status until a signal or the duration; the devices stop with the command."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if duration is not None:
        loop.call_later(duration, stop.set)
    runner.boot_all()
    total = len(runner.devices)
    announced = False
    last = None
    live_view = None
    if console.is_terminal:
        from rich.live import Live

        live_view = Live(_fleet_table(runner), console=console, refresh_per_second=4)
        live_view.start()
    try:
        while not stop.is_set():
            counts = _fleet_counts(runner)
            if live_view is not None:
                live_view.update(_fleet_table(runner))
            elif counts != last:
                print("fleet: " + ", ".join(f"{v} {k}" for k, v in counts.items()), flush=True)
            last = counts
            if not announced and counts["live"] == total:
                announced = True
                if live_view is None:
                    print(f"fleet ready: {total} of {total} devices live", flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STATUS_INTERVAL)
    finally:
        if live_view is not None:
            live_view.stop()
        await runner.stop()
    print(f"fleet stopped: {total} devices powered off", flush=True)
