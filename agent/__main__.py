"""`python -m agent`: the agent as a device's own service.

    python -m agent --env /etc/fleetrig/agent.env --state /var/lib/fleetrig

runs until SIGTERM/SIGINT, a shutdown command, or a reboot command (which runs the device's
power command; the system then goes down around the agent). `--until registered` exits 0 as
soon as the device is live, for first-boot scripts and image checks. argparse, not typer: the
agent carries no dependency it does not need (DESIGN.md section 4).

Exit codes: 0 done; 1 refused (agent.env, credentials, TLS verification, timed out waiting),
one line on stderr naming the problem; 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from agent.compat_guard import UnsupportedVersion
from agent.state import DEFAULT_ENV_FILE, DEFAULT_STATE_DIR

if TYPE_CHECKING:
    from agent.agent import Agent
    from agent.linux import LinuxHardware

EXIT_REFUSED = 1
LOG_LEVELS = ("debug", "info", "warning", "error")
#: Keepalive the agent asks of the broker on a real device (seconds).
DEVICE_KEEPALIVE = 60


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleetrig-agent", description="The fleetrig device agent: register, then serve the platform.")
    parser.add_argument("--env", type=Path, default=DEFAULT_ENV_FILE, metavar="FILE",
                        help=f"the agent.env written by provisioning (default {DEFAULT_ENV_FILE})")
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE_DIR, metavar="DIR",
                        help=f"where the device keeps credentials and configuration (default {DEFAULT_STATE_DIR})")
    parser.add_argument("--until", choices=("registered",),
                        help="exit 0 once the device is registered and live")
    parser.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                        help="with --until: give up after this long (default 120)")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    parser.add_argument("--reboot-command", metavar="CMD",
                        help="run for a reboot command (default: systemctl reboot, or reboot)")
    parser.add_argument("--shutdown-command", metavar="CMD",
                        help="run for a shutdown command (default: systemctl poweroff, or poweroff)")
    parser.add_argument("--firmware-command", metavar="CMD",
                        help="writes a FOTA image: {image} and {version} are replaced (default: FOTA refused)")
    parser.add_argument("--sota-dry-run", action="store_true",
                        help="SOTA simulates apt-get (-s): reports what would change, changes nothing")
    parser.add_argument("--max-backoff", type=float, default=60.0, metavar="SECONDS",
                        help="longest wait between connection attempts (default 60)")
    return parser


def _fail(message: str) -> NoReturn:
    print(f"fleetrig-agent: error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_REFUSED)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.timeout <= 0 or args.max_backoff <= 0:
        _parser().error("--timeout and --max-backoff must be positive")
    # Imported after argument parsing: `--help` works even where a dependency is missing. A
    # library in a release the compat modules refuse is an ImportError too, with its own message.
    try:
        from agent.agent import Agent, AgentError
        from agent.env import AgentEnvError, load_agent_env
        from agent.linux import LinuxHardware
        from agent.state import StateDir
    except UnsupportedVersion as exc:
        _fail(str(exc))
    except ImportError as exc:
        _fail(f"{exc} (the agent needs aiomqtt, paho-mqtt, cryptography, defusedxml and xmlschema)")
    try:
        env = load_agent_env(args.env)
    except AgentEnvError as exc:
        _fail(f"agent.env refused: {exc}")
    try:
        hardware = LinuxHardware(state_dir=args.state, reboot_command=args.reboot_command,
                                 shutdown_command=args.shutdown_command, firmware_command=args.firmware_command,
                                 sota_dry_run=args.sota_dry_run)
    except ValueError as exc:
        _parser().error(str(exc))
    agent = Agent(env, StateDir(args.state), hardware, keepalive=DEVICE_KEEPALIVE,
                  max_backoff=args.max_backoff)
    try:
        code = asyncio.run(_run(agent, hardware, args.until is not None, args.timeout))
    except AgentError as exc:
        _fail(str(exc))
    except PermissionError as exc:
        _fail(f"{exc.filename or args.state}: permission denied (the agent must own its state dir)")
    sys.exit(code)


async def _run(agent: Agent, hardware: LinuxHardware, until_live: bool, timeout: float) -> int:
    from agent.agent import AgentError

    task = asyncio.create_task(agent.run_until_live(timeout) if until_live else agent.run())
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
    if until_live:
        try:
            await task
        except asyncio.CancelledError:
            print(f"fleetrig-agent: {agent.serial} interrupted before it was live", file=sys.stderr, flush=True)
            return EXIT_REFUSED
        print(f"{agent.serial} registered and live", flush=True)
        return 0
    actions: list[str] = []

    def power(action: str) -> None:  # the power command ran: the system is going down
        actions.append(action)
        task.cancel()

    hardware.power.on_power = power
    print(f"{agent.serial} running", flush=True)
    try:
        await task
    except asyncio.CancelledError:
        pass
    except AgentError:
        if not actions:
            raise
        # The power command ran (a decommission's shutdown, say) and the platform closed the
        # session meanwhile: the system is going down, which is what was asked.
    print(f"{agent.serial} stopped{f' ({actions[-1]})' if actions else ''}", flush=True)
    return 0


if __name__ == "__main__":
    main()
