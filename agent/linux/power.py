"""Reboot and shutdown on a real device, through a command the operator can replace.

The default is systemd's (`systemctl reboot` / `systemctl poweroff`) where systemd runs the
system, else the classic `reboot` / `poweroff`. A board on a lab bench, or a test on a
developer's machine, names its own commands (`--reboot-command`, `--shutdown-command`), so
nothing but the device under test ever goes down. After the command succeeds, `on_power`
tells the agent's entry point to stop: the system is going down around it.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path

from agent.linux import commands

ACTIONS = ("reboot", "shutdown")


def default_command(action: str, root: Path = Path("/")) -> list[str]:
    systemd = (root / "run/systemd/system").is_dir() and commands.which("systemctl")
    if systemd:
        return ["systemctl", "reboot" if action == "reboot" else "poweroff"]
    return ["reboot" if action == "reboot" else "poweroff"]


class PowerControl:
    def __init__(self, reboot: str | None = None, shutdown: str | None = None, root: Path = Path("/")) -> None:
        self.commands = {
            "reboot": shlex.split(reboot) if reboot else default_command("reboot", root),
            "shutdown": shlex.split(shutdown) if shutdown else default_command("shutdown", root),
        }
        for action, argv in self.commands.items():
            if not argv:
                raise ValueError(f"the {action} command is empty")
        #: Called with the action once its command has succeeded.
        self.on_power: Callable[[str], None] | None = None

    def act(self, action: str) -> None:
        argv = self.commands[action]
        commands.run(argv, what=action, timeout=60)
        if self.on_power is not None:
            self.on_power(action)

